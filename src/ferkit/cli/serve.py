"""``ferkit serve``: the web page and REST API on a port; every setting of
:class:`~ferkit.serve.config.ServeConfig` is a flag."""

from __future__ import annotations

import argparse
import dataclasses

from ferkit.cli.common import HelpFormatter
from ferkit.settings import add_option


def add_serve(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.serve.config import ServeConfig

    parser = subparsers.add_parser(
        "serve",
        formatter_class=HelpFormatter,
        help="a REST API and a web page (photos, videos, a live camera) on a port",
        description=(
            "Serve the recogniser: the web page at /, the REST API under /v1 (POST "
            "/v1/predict for photos, POST /v1/videos for video jobs, WS /v1/stream for a "
            "live camera), /healthz, and the API reference at /docs. The model loads once "
            "per worker. Every limit below has a safe default; a request over one gets a "
            "JSON error with its status (413, 415, 422, 429, 503...).\n\n"
            "Listening on an address other than loopback needs --api-key (or "
            "$FERKIT_API_KEY), or --insecure."
        ),
        epilog="Needs the serve extra: pip install -e '.[serve]'. Ctrl-C stops the server.",
    )
    for field in dataclasses.fields(ServeConfig):  # every setting is a flag
        add_option(parser, ServeConfig, field.name)
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from ferkit.extras import require_serve

    require_serve()
    from ferkit.serve.config import ServeConfig
    from ferkit.serve.server import run

    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    run(
        config,
        # One line per request (and every warning and error) by default, as a service's
        # operator expects; -v adds the libraries' debug lines.
        log_level="debug" if args.verbose else "info",
        announce=lambda line: print(line, flush=True),
    )
    return 0
