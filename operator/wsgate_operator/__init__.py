"""The wsgate operator: Kubernetes objects in, a compiled GatewayConfig out."""
