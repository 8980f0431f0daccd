"""Statuses and Events written with aiohttp (kube.KubeWriter), against the emulator."""

from __future__ import annotations

import kubernetes

from wsgate_operator.compiler import ObjectRef
from wsgate_operator.kube import KubeApi, KubeWriter, load_client_config
from wsgate_operator.status import Event


async def test_the_token_hook_is_asked_once_for_a_burst_of_writes(api):
    """The kubeconfig loader's hook reloads the whole configuration each time it is
    asked: a burst of writes asks it once, and uses the token it gave."""
    load_client_config()
    config = kubernetes.client.Configuration.get_default_copy()
    hook = config.refresh_api_key_hook
    asked = []

    def counted(configuration):
        asked.append(1)
        if hook is not None:
            hook(configuration)  # which installs itself again, as the loader configures
        configuration.refresh_api_key_hook = counted

    config.refresh_api_key_hook = counted
    api_connection = KubeApi(config)
    writer = KubeWriter(api_connection)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "default", "uid": "u"}}
    try:
        for _ in range(5):
            await writer.post_event(pod, Event(ObjectRef("Pod", "default", "p"), "Normal",
                                               "Tested", "a burst"))
    finally:
        await api_connection.close()
    assert len(asked) == 1
    posted = [r for r in api.requests if r.resource == "events" and r.verb == "create"]
    assert len(posted) == 5  # each with the token: the emulator refuses none
