"""``ferkit serve``: the recogniser as a REST API, a live WebSocket and a web page.

Needs the ``serve`` extra (FastAPI, Uvicorn) on top of the core install.

- :mod:`~ferkit.serve.config`: :class:`ServeConfig`, every setting and limit of the
  service, declared once (the command's flags derive from it).
- :mod:`~ferkit.serve.guards`: ASGI layers that bound request bodies and time, close
  cross-origin requests and add security headers; JSON error bodies.
- :mod:`~ferkit.serve.engine`: a pool of recognisers shared by the requests, the memory
  budget of every decoding in a process, and the JSON form of results.
- :mod:`~ferkit.serve.jobs`: video jobs: uploaded, processed in the background, kept on
  disk (so that every worker process sees them) and removed after a while; the jobs
  folders of servers, locked while they run and swept once their server is gone.
- :mod:`~ferkit.serve.app`: the routes (:func:`create_app`).
- :mod:`~ferkit.serve.protocol`: Uvicorn's HTTP protocol with a deadline for headers.
- :mod:`~ferkit.serve.server`: starting Uvicorn with the checks that keep it safe, and
  removing the jobs folder however it stops.
- :mod:`~ferkit.serve.loadtest`: ``ferkit benchmark serve``, a bounded load on loopback.
- ``static/``: the web page (plain HTML, CSS and JavaScript; no build step).
"""
