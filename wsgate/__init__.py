"""wsgate: the command line that runs the operator, the proxy and the demo echo upstream."""
