"""`make demo`: print requests that work as written against the demo bundle, then run the edge node."""

from __future__ import annotations

import functools
import os
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq

from aura.bundle.format import USER_SEGMENTS
from aura.bundle.store import open_store
from aura.config import load_config
from aura.edge import node

EXAMPLES = (Path(__file__).parent / "demo_requests.txt").read_text()


def assigned_visitor(bundle_dir: Path) -> tuple[str, str]:
    """An anon id with a confident precomputed segment, and its segment's device, for the examples."""
    table = pq.read_table(bundle_dir / USER_SEGMENTS, columns=["user_id", "segment_id", "confidence"])
    best = max(table.to_pylist(), key=lambda row: (row["confidence"], row["user_id"]))
    device = next((d for d in ("mobile", "tablet", "desktop") if d in best["segment_id"]), "mobile")
    return best["user_id"], device


SDK_DIR = Path(__file__).resolve().parent.parent / "sdk"
DEMO_SITE_PORT = int(os.environ.get("AURA_DEMO_SITE_PORT", "8080"))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the demo's terminal for the node's own log: no line per static file served."""


def serve_demo_site(host: str, port: int) -> str:
    """Serve `sdk/` (the demo pages beside the SDK build) on a daemon thread; return the site's origin."""
    handler = functools.partial(_QuietHandler, directory=str(SDK_DIR))
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="demo-site", daemon=True).start()
    return f"http://{host}:{port}"


def main() -> int:
    """Print the examples for the promoted demo bundle, then run `aura-edge` in the foreground."""
    settings = load_config().settings
    store = open_store(settings.bundle_store, settings.s3_endpoint_url or None)
    version = store.current()
    if version is None:
        print(f"aura demo: the store {settings.bundle_store} has no promoted bundle; run `make demo`.", file=sys.stderr)
        return 2
    bundle_dir = Path(settings.bundle_store) / "bundles" / version
    anon, device = assigned_visitor(bundle_dir)
    try:
        site = serve_demo_site(settings.api_host, DEMO_SITE_PORT)
    except OSError as exc:
        print(
            f"aura demo: cannot serve the demo site on {settings.api_host}:{DEMO_SITE_PORT}: {exc.strerror}; "
            "set AURA_DEMO_SITE_PORT to a free port.",
            file=sys.stderr,
        )
        return 2
    # The worker processes read their settings from the environment: let the demo site call the API.
    os.environ.setdefault("AURA_CORS_ORIGINS", f"{site},http://localhost:{DEMO_SITE_PORT}")
    print(
        EXAMPLES.format(
            grpc=settings.grpc_address,
            http=f"http://{settings.api_host}:{settings.api_port}",
            version=version,
            anon=anon,
            device=device,
            token=settings.admin_token or "<set AURA_ADMIN_TOKEN>",
            site=site,
        ),
        flush=True,
    )
    return node.main([])


if __name__ == "__main__":
    sys.exit(main())
