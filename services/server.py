"""Import path of the query service for Ray Serve: ``services.server:app``.

The RayService manifest (k8s/rayservice.query.yaml) and ``serve run services.server:app``
load ``app``: the Serve application of :mod:`services.api.ray_serve` over the store named
by ``STRATALENS_STORE``, one replica unless the manifest says otherwise.
"""

from services.api.ray_serve import build_app

app = build_app({})
