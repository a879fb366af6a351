"""`python -m devstack serve|demo|generate` (from the repository root): an embedded local AWS for trying the CLIs
by hand, `make demo`, and the synthetic generator."""

from __future__ import annotations

import signal
import sys
import time

import click

from devstack.generate import main as generate
from devstack.provision import provision
from devstack.server import MotoServer


@click.group()
def cli() -> None:
    """Dev tooling: the embedded local AWS (a moto server over HTTP) with sample tenants, the demo, the generator."""


@cli.command()
@click.option("--port", type=int, default=0, help="Port to listen on. [default: a free one]")
def serve(port: int) -> None:
    """Start the local AWS, provision it, print the env vars that point clients at it, and wait."""
    server = MotoServer(port=port) if port else MotoServer()
    server.start()
    env = provision(server.endpoint_url)
    for k, v in env.env.items():
        click.echo(f"export {k}={v}")
    click.echo(
        "# sample tenants: " + ", ".join(f"{t.tenant_id} (account {t.account_id})" for t in env.tenants), err=True
    )
    click.echo("# Ctrl-C to stop", err=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@cli.command()
def demo() -> None:
    """Generate a multi-tenant data set, replay one tenant on a local Ray, and show what arrived where."""
    from devstack.demo import run_demo

    sys.exit(run_demo())


cli.add_command(generate, "generate")


if __name__ == "__main__":
    cli()
