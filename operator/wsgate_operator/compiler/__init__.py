"""The compiler: Kubernetes objects in, the proxy's GatewayConfig and per-object
problems out.

Pure, and shared by the operator, standalone mode and `wsgate compile`. A broken
object never breaks the others: it is reported as a Problem on itself and left out
(or compiled without what it lacks), and everything else flows on; objects of any
shape may arrive, and the compiler reports them rather than raising.

One module per source kind (routes, consumers, secrets and certificates, backends:
Services and EndpointSlices), the shapes every object is held to first, and one
build context (context.py) that holds the indexes and collects each object's problems.
"""

from .build import compile_snapshot
from .compiled import Compiled
from .objects import DEFAULT_NAMESPACE, SNAPSHOT_KINDS, K8sObject, ObjectRef, Problem, Snapshot

__all__ = ["DEFAULT_NAMESPACE", "SNAPSHOT_KINDS", "Compiled", "K8sObject", "ObjectRef",
           "Problem", "Snapshot", "compile_snapshot"]
