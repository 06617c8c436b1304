"""Ray Serve: the member, generator and language-model deployments, the FastAPI ingress and its
HTTP schema, the load-balancer config, deploy helpers and the demo client."""
