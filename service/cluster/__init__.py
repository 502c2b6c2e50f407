"""SC-TIR on a Ray Serve cluster: the one package that imports ray.

Engine replicas (engine_replica.py) each host one vLLM engine; solver replicas (solver_replica.py) are the
service's FastAPI app as Serve's HTTP ingress, each with its own sandbox pool, and reach the engine replicas
through a DeploymentHandle wrapped as an Engine (engine.py), so the solver does not change. The handle's
router (router.py) keeps every step of a problem on one engine replica while it is healthy and has room;
app.py binds the two deployments into one Serve application.
"""
