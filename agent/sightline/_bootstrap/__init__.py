"""Put on PYTHONPATH by ``sightline run``: its ``sitecustomize`` starts the agent."""
