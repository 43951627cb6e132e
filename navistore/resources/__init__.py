"""The REST resources: parse the request, call the Node, set the response. Nothing else."""
