"""`log-tenants`: tenants and their deliveries (CONTRACTS.md §3): list, show, change, check live, migrate;
serve the API.

log-tenants list                                  # every tenant of $TENANT_CONFIG_TABLE, each delivery
log-tenants profile create acme --account 111111111111   # its accounts; prints the generated ExternalId
log-tenants migrate-profiles --tenant acme        # a profile for a tenant from before profiles
log-tenants list --table tenant-configs-v1 --json # another table (either shape), for scripts
log-tenants put acme cloudwatch --file acme.yaml  # create or replace one delivery
log-tenants validate acme                         # live preflight of each of acme's deliveries
log-tenants export > tenants.yaml                 # the whole table, for review in git
log-tenants migrate --from tenant-configs-v1 --to tenant-configs --dry-run
log-tenants serve --port 8080                     # the HTTP API (CONTRACTS.md §9)
log-tenants status                                # each delivery's status, worst first (--json)
log-tenants replay start acme --since 2024-05-01T10:00Z --until 2024-05-01T16:30Z   # a redelivery, as a Ray job

The logic lives in `pipeline.admin`; this module only reads options, prints and picks the exit code.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import yaml
from botocore.exceptions import BotoCoreError

from pipeline import aws, logs
from pipeline.admin import text
from pipeline.admin.listing import list_tenants
from pipeline.admin.migrate import migrate
from pipeline.admin.preflight import Preflight
from pipeline.admin.profiles import customer_note, deploy_commands, migrate_profiles, profile_json, regions_of
from pipeline.admin.store import Change, NotFound, PreconditionFailed, TenantStore
from pipeline.admin.tables import open_table
from pipeline.admin.transfer import dump, export_doc, import_doc, load
from pipeline.cli import CONTEXT_SETTINGS
from pipeline.commands.replays import replay
from pipeline.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from pipeline.settings import ConfigError, Settings
from pipeline.tenants import FIELDS, TenantConfigError, TenantDirectory, parse_delivery, parse_profile

AWS_ENV = "AWS_REGION, AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_DYNAMODB), AWS_PROFILE and the usual credentials"
ENVIRONMENT = f"Settings from the environment: TENANT_CONFIG_TABLE, {AWS_ENV}."


@click.group(
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        f"{ENVIRONMENT} Exit codes: 0 ok; 1 an invalid delivery, a failed preflight or a migration conflict "
        "(the output names it); 2 bad usage; 3 configuration: no table name, a table that does not exist or cannot be "
        "reached, or one with the wrong key schema. Run COMMAND --help for each command."
    ),
)
def main() -> None:
    """Look after the tenant table (CONTRACTS.md §3): each item is one delivery of one tenant, a CloudWatch
    Logs group or an S3 bucket in the tenant's own account.

    \b
    Table v2 (what new deployments create): hash key tenant_id, range key delivery_id, any number of
    deliveries per tenant. Table v1 (older deployments): hash key tenant_id only, one CloudWatch delivery
    per tenant, read as the delivery `cloudwatch`. Every command reads both; `migrate` copies v1 into v2."""


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")(f)


def _log_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--log-level", default="WARNING", show_default=True, help="Structured log level (JSON on stderr)."
    )(f)


@contextmanager
def _configuration() -> Iterator[None]:
    """A configuration problem is one line on stderr and exit code 3, never a traceback."""
    try:
        yield
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except BotoCoreError as exc:  # no region, no credentials, an endpoint that does not answer
        click.echo(f"error: cannot reach DynamoDB: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _print(doc: dict[str, Any] | None, rendered: str, as_json: bool) -> None:
    click.echo(json.dumps(doc, indent=2) if as_json else rendered)


@main.command(
    "list",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        f"{ENVIRONMENT} Exit codes: 0 every delivery is valid; 1 some are invalid (each is listed with every "
        "bad field); 3 no table name, or a table that does not exist or is not a tenant table."
    ),
)
@click.option("--table", help="Tenant table, v1 or v2. [default: $TENANT_CONFIG_TABLE]")
@_json_option
@_log_option
def list_command(table: str | None, as_json: bool, log_level: str) -> None:
    """List every tenant and each of its deliveries: id, type, enabled, target (log group and region, or
    s3://bucket/prefix), desired_logs and clusters ("all" when the field is absent). A delivery that does not
    validate is listed as INVALID with the reason, naming every bad field.

    With --json, each delivery is printed as its v2 item (the §3 field names, defaults filled in) plus
    `target`."""
    logs.setup(log_level)
    settings = Settings.from_env().with_overrides(tenant_table=table)
    with _configuration():
        if not settings.tenant_table:
            raise ConfigError("no tenant table: set TENANT_CONFIG_TABLE or give --table")
        ddb = aws.client("dynamodb")
        open_table(ddb, settings.tenant_table)
        listing = list_tenants(TenantDirectory(settings.tenant_table, client=ddb))
    _print(listing.to_json(), listing.render(), as_json)
    sys.exit(EXIT_FAILED if listing.invalid else EXIT_OK)


@main.command(
    "migrate",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        f"Settings from the environment: {AWS_ENV}. Exit codes: 0 every v1 item is in the v2 table (copied "
        "now or before; with --dry-run: would be); 1 a conflict or an invalid v1 item (listed, not copied); "
        "2 bad usage; 3 a table that does not exist, or --from not a v1 / --to not a v2 tenant table."
    ),
)
@click.option("--from", "source", required=True, metavar="V1_TABLE", help="The v1 tenant table to read.")
@click.option("--to", "target", required=True, metavar="V2_TABLE", help="The v2 tenant table to write (must exist).")
@click.option("--dry-run", is_flag=True, help="Write nothing; report what would be copied, and every problem.")
@_json_option
@_log_option
def migrate_command(source: str, target: str, dry_run: bool, as_json: bool, log_level: str) -> None:
    """Copy each tenant of the v1 table V1_TABLE into the v2 table V2_TABLE, as its delivery `cloudwatch`.

    \b
    Every v1 item is validated first; one that does not validate is reported with every bad field and not
    copied. The v2 item keeps created_at/updated_at when the v1 item has them; attributes the schema does not
    define are not copied (the line names them). Nothing in V2_TABLE is ever overwritten: an item that is
    already there is `unchanged` when it is the same delivery, and a `conflict` otherwise (reported with the
    fields that differ, and left as it is). Idempotent: run it again after fixing what it reported; items
    copied before are `unchanged`. V1_TABLE is only read."""
    logs.setup(log_level)
    with _configuration():
        result = migrate(aws.client("dynamodb"), source, target, dry_run=dry_run)
    _print(result.to_json(), result.render(), as_json)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


# -- one delivery at a time -----------------------------------------------------------------------------------

EDITABLE = [f for f in FIELDS if not f.key and not f.managed]


def _field_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """A flag per §3 field (from the one field table): --log-group-name, --desired-logs a,b (repeatable)..."""
    for spec in reversed(EDITABLE):
        flag = "--" + spec.name.replace("_", "-")
        if spec.kind == "names":
            opt = click.option(flag, spec.name, multiple=True, metavar="NAME[,NAME]", help=spec.description + ".")
        elif spec.kind == "patterns":  # regexes hold commas ({1,3}): one per flag, never split
            opt = click.option(flag, spec.name, multiple=True, metavar="REGEX", help=spec.description + " (repeat).")
        elif spec.kind == "integer":  # validated by parse_delivery, so the CLI refuses in the API's words
            opt = click.option(flag, spec.name, metavar="N", help=spec.description + ".")
        elif spec.kind == "boolean":
            opt = click.option(flag, spec.name, type=click.BOOL, metavar="true|false", help=spec.description + ".")
        else:
            opt = click.option(flag, spec.name, metavar="TEXT", help=spec.description + ".")
        f = opt(f)
    return f


def _flag_values(values: dict[str, Any]) -> dict[str, Any]:
    """The fields given on the command line (names split on commas), in item form."""
    out: dict[str, Any] = {}
    for spec in EDITABLE:
        value = values.get(spec.name)
        if value is None or (spec.kind in ("names", "patterns") and not value):
            continue
        if spec.kind == "names":
            value = [n.strip() for v in value for n in v.split(",") if n.strip()]
        elif spec.kind == "patterns":
            value = list(value)
        out[spec.name] = value
    return out


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli:unknown"


def _store(table: str | None) -> TenantStore:
    """The v2 tenant table to change (ConfigError when there is none, or it is v1)."""
    settings = Settings.from_env().with_overrides(tenant_table=table)
    if not settings.tenant_table:
        raise ConfigError("no tenant table: set TENANT_CONFIG_TABLE or give --table")
    store = TenantStore(settings.tenant_table, aws.client("dynamodb"), actor=_actor())
    store.check()
    return store


def _table_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--table", help="Tenant table (v2). [default: $TENANT_CONFIG_TABLE]")(f)


def _if_match_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--if-match", metavar="ETAG", help="Change only if the delivery is still at this ETag (from show --json)."
    )(f)


def _invalid(exc: TenantConfigError, as_json: bool) -> None:
    """Every bad field, then exit 1: nothing was written."""
    if as_json:
        click.echo(json.dumps({"error": exc.reason, "fields": dict(sorted(exc.fields.items()))}, indent=2))
    else:
        click.echo("error: invalid delivery, nothing written:", err=True)
        for name, problem in sorted(exc.fields.items()) or [("item", exc.reason)]:
            click.echo(f"  {name}: {problem}", err=True)
    sys.exit(EXIT_FAILED)


def _change_out(change: Change, tenant_id: str, delivery_id: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"action": change.action, "item": change.after, "etag": change.etag}, indent=2))
        return
    target = parse_delivery(change.after or change.before or {}).target if (change.after or change.before) else ""
    click.echo(f"{change.action}: tenant {tenant_id} delivery {delivery_id} {target}".rstrip())


@contextmanager
def _changes(as_json: bool) -> Iterator[None]:
    """Validation (1), unknown (1) and If-Match (1) failures as one message each; configuration as 3."""
    with _configuration():
        try:
            yield
        except TenantConfigError as exc:
            _invalid(exc, as_json)
        except (NotFound, PreconditionFailed) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)


@main.command("show", context_settings=CONTEXT_SETTINGS)
@click.argument("tenant")
@_table_option
@_json_option
@_log_option
def show_command(tenant: str, table: str | None, as_json: bool, log_level: str) -> None:
    """The profile of TENANT (its accounts and ExternalId) and every delivery as stored, with
    created_at/updated_at and its ETag (for --if-match).

    Exit codes: 0 shown; 1 unknown tenant, or an invalid delivery (listed with every bad field); 3 configuration."""
    logs.setup(log_level)
    with _changes(as_json):
        store = _store(table)
        good, bad = store.tenant(tenant)
        described = store.describe(tenant)
    if as_json:
        doc = {
            "tenant_id": tenant,
            "profile": profile_json(described["profile"]),
            "legacy": described["legacy"],
            "deliveries": [{**_shown(s.item), "etag": s.etag} for s in good],
            "invalid": [{"delivery_id": d, "reason": r} for d, r in bad],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        if described["profile"] is not None:
            click.echo("profile")
            rows = [(k, _cell(v)) for k, v in sorted((profile_json(described["profile"]) or {}).items())]
            click.echo(text.table(("FIELD", "VALUE"), rows) + "\n")
        elif described["legacy"]:
            click.echo(f"profile: none (legacy tenant): run `log-tenants migrate-profiles --tenant {tenant}`\n")
        for s in good:
            click.echo(f"delivery {s.item['delivery_id']}  (etag {s.etag})")
            rows = [(k, _cell(v)) for k, v in sorted(_shown(s.item).items()) if k not in ("tenant_id", "delivery_id")]
            click.echo(text.table(("FIELD", "VALUE"), rows))
            click.echo("")
        for delivery_id, reason in bad:
            click.echo(f"delivery {delivery_id}  INVALID: {reason}")
    sys.exit(EXIT_FAILED if bad else EXIT_OK)


def _shown(item: dict[str, Any]) -> dict[str, Any]:
    """A delivery as `show` prints it: as stored, plus, when it names `groups`, the application filter they
    expand to with desired_logs (`applications`, computed, never stored)."""
    if not item.get("groups"):
        return item
    applications = parse_delivery(item).applications
    return {**item, "applications": sorted(applications or ())}


def _cell(value: Any) -> str:
    return (
        ",".join(map(str, value))
        if isinstance(value, list)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


@main.command("put", context_settings=CONTEXT_SETTINGS)
@click.argument("tenant")
@click.argument("delivery")
@click.option("--file", "path", type=click.File("r"), help="The delivery as YAML or JSON (its §3 fields; - for stdin).")
@_field_options
@_if_match_option
@_table_option
@_json_option
@_log_option
def put_command(
    tenant: str,
    delivery: str,
    path: Any,
    if_match: str | None,
    table: str | None,
    as_json: bool,
    log_level: str,
    **fields: Any,
) -> None:
    """Create or replace the delivery DELIVERY of TENANT, from --file and/or the field flags (flags win).

    The whole item is validated first (every bad field named, nothing written when one is bad). Replacing
    keeps created_at; an identical delivery is `unchanged` and not written. Exit codes: 0 written or
    unchanged; 1 invalid, or --if-match names another version; 2 bad usage; 3 configuration."""
    logs.setup(log_level)
    body: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read())
        if not isinstance(loaded, dict):
            raise click.BadParameter("the file must hold one mapping of §3 fields", param_hint="--file")
        body.update(loaded)
    body.update(_flag_values(fields))
    with _changes(as_json):
        change = _store(table).put(tenant, delivery, body, if_match)
    _change_out(change, tenant, delivery, as_json)


@main.command("patch", context_settings=CONTEXT_SETTINGS)
@click.argument("tenant")
@click.argument("delivery")
@_field_options
@click.option("--unset", multiple=True, type=click.Choice([f.name for f in EDITABLE if not f.required_for]),
              help="Remove a field (its default applies); repeatable.")  # fmt: skip
@_if_match_option
@_table_option
@_json_option
@_log_option
def patch_command(
    tenant: str,
    delivery: str,
    unset: tuple[str, ...],
    if_match: str | None,
    table: str | None,
    as_json: bool,
    log_level: str,
    **fields: Any,
) -> None:
    """Change some fields of an existing delivery; the result is validated whole before it is written.

    Exit codes: 0 written or unchanged; 1 invalid, unknown, or --if-match names another version; 3 configuration."""
    logs.setup(log_level)
    changes: dict[str, Any] = {**_flag_values(fields), **dict.fromkeys(unset)}
    if not changes:
        raise click.UsageError("nothing to change: give a field flag or --unset")
    with _changes(as_json):
        change = _store(table).patch(tenant, delivery, changes, if_match)
    _change_out(change, tenant, delivery, as_json)


def _switch(tenant: str, delivery: str | None, enabled: bool, table: str | None, as_json: bool) -> None:
    with _changes(as_json):
        store = _store(table)
        ids = [delivery] if delivery else [s.item["delivery_id"] for s in store.tenant(tenant)[0]]
        changes = [(d, store.patch(tenant, d, {"enabled": enabled})) for d in ids]
    if as_json:
        click.echo(json.dumps([{"delivery_id": d, "action": c.action, "etag": c.etag} for d, c in changes], indent=2))
    else:
        for d, c in changes:
            click.echo(f"{c.action}: tenant {tenant} delivery {d} {'enabled' if enabled else 'disabled'}")


@main.command("enable", context_settings=CONTEXT_SETTINGS)
@click.argument("tenant")
@click.argument("delivery", required=False)
@_table_option
@_json_option
@_log_option
def enable_command(tenant: str, delivery: str | None, table: str | None, as_json: bool, log_level: str) -> None:
    """Enable DELIVERY of TENANT, or every delivery of TENANT. Exit codes: 0 ok; 1 unknown; 3 configuration."""
    logs.setup(log_level)
    _switch(tenant, delivery, True, table, as_json)


@main.command("disable", context_settings=CONTEXT_SETTINGS)
@click.argument("tenant")
@click.argument("delivery", required=False)
@_table_option
@_json_option
@_log_option
def disable_command(tenant: str, delivery: str | None, table: str | None, as_json: bool, log_level: str) -> None:
    """Disable DELIVERY of TENANT, or every delivery of TENANT: objects for it are skipped (and reported as
    such) until it is enabled again. Exit codes: 0 ok; 1 unknown; 3 configuration."""
    logs.setup(log_level)
    _switch(tenant, delivery, False, table, as_json)


@main.command("delete", context_settings=CONTEXT_SETTINGS)
@click.argument("tenant")
@click.argument("delivery")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_if_match_option
@_table_option
@_json_option
@_log_option
def delete_command(
    tenant: str, delivery: str, yes: bool, if_match: str | None, table: str | None, as_json: bool, log_level: str
) -> None:
    """Remove the delivery DELIVERY of TENANT (asks first unless --yes). The ledger keeps its records.

    Exit codes: 0 deleted; 1 unknown, declined, or --if-match names another version; 3 configuration."""
    logs.setup(log_level)
    with _changes(as_json):
        store = _store(table)
        target = parse_delivery(store.get(tenant, delivery).item).target
        if not yes and not click.confirm(f"delete delivery {delivery} of tenant {tenant} ({target})?", err=True):
            click.echo("not deleted", err=True)
            sys.exit(EXIT_FAILED)
        change = store.delete(tenant, delivery, if_match)
    _change_out(change, tenant, delivery, as_json)


# -- tenant profiles -------------------------------------------------------------------------------------------

PROFILE_EPILOG = (
    f"{ENVIRONMENT} CENTRAL_LOG_DISTRIBUTION_ROLE_ARN goes into the printed deploy command. Exit codes: 0 ok; "
    "1 invalid (every bad field named, nothing written) or unknown; 2 bad usage; 3 configuration."
)


@main.group("profile", context_settings=CONTEXT_SETTINGS, epilog=PROFILE_EPILOG)
def profile_group() -> None:
    """A tenant's profile (CONTRACTS.md §3): the AWS accounts its deliveries may write into, and the
    ExternalId its customer's role trusts, generated here and never chosen by hand.

    \b
    create  give a tenant a profile (or change its accounts); prints the ExternalId and the exact
            `aws cloudformation deploy` command its customer runs
    show    the profile and that command again
    rotate  start an ExternalId rotation (external_id_next), promote  finish it, cancel-rotation
    A delivery whose role is outside the accounts is refused when written and again when delivered."""


def _profile_out(
    action: str, store_table: str | None, tenant: str, raw: dict[str, Any], region: str | None, as_json: bool
) -> None:
    profile = parse_profile(raw)
    commands = deploy_commands(
        profile, Settings.from_env().central_role_arn or None, regions_of(_store(store_table), tenant, region)
    )
    if as_json:
        click.echo(json.dumps({"action": action, "profile": profile_json(raw), "redeploy": commands}, indent=2))
        return
    click.echo(f"{action}: profile of tenant {tenant}, accounts {', '.join(sorted(profile.accounts))}")
    click.echo(f"ExternalId: {profile.external_id}")
    if profile.external_id_next:
        click.echo(f"ExternalIdNext: {profile.external_id_next}")
    click.echo(customer_note(profile))
    for command in commands:
        click.echo(command)


def _region_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--region", help="Region of the customer's stack in the printed command. [default: its deliveries' regions]"
    )(f)


@profile_group.command("create", context_settings=CONTEXT_SETTINGS, epilog=PROFILE_EPILOG)
@click.argument("tenant")
@click.option("--account", "accounts", multiple=True, required=True, metavar="ID[,ID]",
              help="A 12-digit AWS account id the tenant's deliveries may write into; repeatable.")  # fmt: skip
@_region_option
@_if_match_option
@_table_option
@_json_option
@_log_option
def profile_create_command(
    tenant: str,
    accounts: tuple[str, ...],
    region: str | None,
    if_match: str | None,
    table: str | None,
    as_json: bool,
    log_level: str,
) -> None:
    """Create the profile of TENANT with a newly generated ExternalId (256 bits), or set the accounts of
    the one it has (its ExternalId is kept). On creation, prints the ExternalId and the command its customer
    runs to deploy the customer template with it: hand both to the customer. An account some delivery still
    writes into cannot be taken away."""
    logs.setup(log_level)
    body = {"accounts": [a.strip() for v in accounts for a in v.split(",") if a.strip()]}
    with _changes(as_json):
        change = _store(table).put_profile(tenant, body, if_match)
        if change.action != "created" and not as_json:
            profile = parse_profile(change.after or {})
            click.echo(f"{change.action}: profile of tenant {tenant}, accounts {', '.join(sorted(profile.accounts))}")
            return
        _profile_out(change.action, table, tenant, change.after or {}, region, as_json)


@profile_group.command("show", context_settings=CONTEXT_SETTINGS, epilog=PROFILE_EPILOG)
@click.argument("tenant")
@_region_option
@_table_option
@_json_option
@_log_option
def profile_show_command(tenant: str, region: str | None, table: str | None, as_json: bool, log_level: str) -> None:
    """The profile of TENANT, its ExternalId(s) and the customer's deploy command."""
    logs.setup(log_level)
    with _changes(as_json):
        raw = _store(table).describe(tenant)["profile"]
        if raw is None:
            click.echo(
                f"error: tenant {tenant!r} has no profile (legacy): "
                f"run `log-tenants migrate-profiles --tenant {tenant}`",
                err=True,
            )
            sys.exit(EXIT_FAILED)
        _profile_out("profile", table, tenant, raw, region, as_json)


@profile_group.command("rotate", context_settings=CONTEXT_SETTINGS, epilog=PROFILE_EPILOG)
@click.argument("tenant")
@_region_option
@_table_option
@_json_option
@_log_option
def profile_rotate_command(tenant: str, region: str | None, table: str | None, as_json: bool, log_level: str) -> None:
    """Start an ExternalId rotation: generate external_id_next and print the command with which the customer
    makes its role trust both ids. The second hop keeps sending the current id until `promote`
    (docs/RUNBOOK.md, "Rotating a tenant's ExternalId")."""
    logs.setup(log_level)
    with _changes(as_json):
        change = _store(table).rotate_profile(tenant)
        _profile_out(change.action, table, tenant, change.after or {}, region, as_json)


@profile_group.command("promote", context_settings=CONTEXT_SETTINGS, epilog=PROFILE_EPILOG)
@click.argument("tenant")
@_region_option
@_table_option
@_json_option
@_log_option
def profile_promote_command(tenant: str, region: str | None, table: str | None, as_json: bool, log_level: str) -> None:
    """Finish a rotation: external_id_next becomes the ExternalId every second hop sends (within the tenant
    cache's minute). Run it once the customer has deployed the rotate command; `log-tenants validate TENANT`
    proves the new id. Prints the command with which the customer then drops the old id."""
    logs.setup(log_level)
    with _changes(as_json):
        change = _store(table).promote_profile(tenant)
        _profile_out(change.action, table, tenant, change.after or {}, region, as_json)


@profile_group.command("cancel-rotation", context_settings=CONTEXT_SETTINGS, epilog=PROFILE_EPILOG)
@click.argument("tenant")
@_table_option
@_json_option
@_log_option
def profile_cancel_command(tenant: str, table: str | None, as_json: bool, log_level: str) -> None:
    """Drop external_id_next (a rotation the customer never deployed, or a next id that leaked)."""
    logs.setup(log_level)
    with _changes(as_json):
        change = _store(table).cancel_rotation(tenant)
    if as_json:
        click.echo(json.dumps({"action": change.action}, indent=2))
    else:
        click.echo(f"{change.action}: profile of tenant {tenant}")


@main.command(
    "migrate-profiles",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        f"{ENVIRONMENT} CENTRAL_LOG_DISTRIBUTION_ROLE_ARN goes into the printed commands. Exit codes: 0 done "
        "(or, with --dry-run, would be); 1 a tenant could not be given a profile (named); 3 configuration."
    ),
)
@click.option("--tenant", "tenants", multiple=True, metavar="TENANT",
              help="Only this tenant; repeatable. [default: every legacy tenant]")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Write nothing; say which profiles would be created.")
@_table_option
@_json_option
@_log_option
def migrate_profiles_command(
    tenants: tuple[str, ...], dry_run: bool, table: str | None, as_json: bool, log_level: str
) -> None:
    """Give each legacy tenant (deliveries, no profile) a profile: its accounts are the accounts its
    deliveries' roles and KMS keys are in, and its ExternalId is generated. Prints, per tenant, the command its
    customer must run to redeploy the customer template with the new ExternalId.

    \b
    From the moment a tenant has its profile, its second hop sends the new id, which its customer's role
    trusts only once redeployed: migrate tenant by tenant (--tenant) as customers are ready, then replay the
    window since the migration (docs/RUNBOOK.md, "Migrating tenants to profiles"). Tenants that have a
    profile are left as they are; running it again is safe."""
    logs.setup(log_level)
    with _changes(as_json):
        result = migrate_profiles(_store(table), Settings.from_env().central_role_arn or None, tenants, dry_run)
    _print(result.to_json(), result.render(), as_json)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


# -- the whole table -------------------------------------------------------------------------------------------


@main.command("export", context_settings=CONTEXT_SETTINGS)
@click.option("--output", "-o", type=click.File("w"), default="-", help="Where to write the YAML. [default: stdout]")
@_table_option
@_log_option
def export_command(output: Any, table: str | None, log_level: str) -> None:
    """Write the whole v2 table as YAML (tenants → deliveries → §3 fields; no timestamps), for review in git.

    Exit codes: 0 written; 1 some items do not validate (exported as they are, and named on stderr); 3 configuration."""
    logs.setup(log_level)
    with _configuration():
        doc, invalid = export_doc(_store(table))
    output.write(dump(doc))
    for line in invalid:
        click.echo(f"invalid: {line}", err=True)
    sys.exit(EXIT_FAILED if invalid else EXIT_OK)


@main.command("import", context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.File("r"))
@click.option("--dry-run", is_flag=True, help="Write nothing; say what would change.")
@click.option("--prune", is_flag=True, help="Also delete the deliveries the file does not hold.")
@_table_option
@_json_option
@_log_option
def import_command(source: Any, dry_run: bool, prune: bool, table: str | None, as_json: bool, log_level: str) -> None:
    """Make the table hold the deliveries of SOURCE (a file `export` wrote, edited).

    Every delivery of the file is validated first; when one is bad, nothing is written and each bad field
    is named. Then each delivery that differs is created or replaced (keeping created_at), and with
    --prune each delivery the file does not hold is deleted. Exit codes: 0 ok; 1 invalid file; 3 configuration."""
    logs.setup(log_level)
    with _changes(as_json):
        wanted = load(source.read())
        result = import_doc(_store(table), wanted, dry_run=dry_run, prune=prune)
    _print(result.to_json(), result.render(), as_json)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


# -- live checks and the API -------------------------------------------------------------------------------------


@main.command(
    "validate",
    context_settings=CONTEXT_SETTINGS,
    epilog="Settings: TENANT_CONFIG_TABLE, CENTRAL_LOG_DISTRIBUTION_ROLE_ARN, " + AWS_ENV + ".",
)
@click.argument("tenant")
@click.option("--delivery", "delivery_id", metavar="ID", help="Only this delivery. [default: every one of TENANT]")
@click.option("--table", help="Tenant table, v1 or v2. [default: $TENANT_CONFIG_TABLE]")
@_json_option
@_log_option
def validate_command(tenant: str, delivery_id: str | None, table: str | None, as_json: bool, log_level: str) -> None:
    """Live preflight: for each delivery, assume the central role, then the tenant's role with the delivery's
    ExternalId, then write one marked test event (CloudWatch: a `preflight-…` stream in its group) or one
    marked object (S3: under {bucket_prefix}{tenant}/_preflight/). Stops at the first failing step and says
    the AWS error and what usually causes it. Touches nothing but this tenant's own destinations.

    Exit codes: 0 every step of every delivery passed; 1 a step failed, an invalid delivery, or an unknown
    tenant or delivery; 3 configuration (no table, no central role)."""
    logs.setup(log_level)
    settings = Settings.from_env().with_overrides(tenant_table=table)
    with _configuration():
        settings.require("tenant_table", "central_role_arn")
        ddb = aws.client("dynamodb")
        open_table(ddb, settings.tenant_table)
        try:
            found = TenantDirectory(settings.tenant_table, client=ddb).get(tenant)
        except TenantConfigError as exc:
            click.echo(f"error: {exc.reason}", err=True)
            sys.exit(EXIT_FAILED)
    deliveries = [d for d in found.deliveries if delivery_id in (None, d.delivery_id)]
    invalid = [i for i in found.invalid if delivery_id in (None, i.delivery_id)]
    if not deliveries and not invalid:
        click.echo(f"error: tenant {tenant!r} has no delivery {delivery_id!r}", err=True)
        sys.exit(EXIT_FAILED)
    preflight = Preflight(settings.central_role_arn)
    reports = [preflight.run(d) for d in deliveries]
    doc = {
        "tenant_id": tenant,
        "ok": all(r.ok for r in reports) and not invalid,
        "deliveries": [r.to_json() for r in reports],
        "invalid": [{"delivery_id": i.delivery_id, "reason": i.reason} for i in invalid],
    }
    rendered = "\n\n".join(
        [r.render() for r in reports] + [f"delivery {i.delivery_id} INVALID: {i.reason}" for i in invalid]
    )
    _print(doc, rendered, as_json)
    sys.exit(EXIT_OK if doc["ok"] else EXIT_FAILED)


@main.command(
    "serve",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        "Settings: one key source, TENANT_API_KEYS_FILE (a mounted key file), TENANT_API_KEY_SECRET_ARN (a Secrets "
        "Manager secret holding the key document) or locally TENANT_API_KEY (one admin key, id local); "
        "API_NONCE_TABLE (required but with TENANT_API_KEY), TENANT_CONFIG_TABLE (v2), "
        f"CENTRAL_LOG_DISTRIBUTION_ROLE_ARN, {AWS_ENV}. Exit code 3 when one is missing."
    ),
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--table", help="Tenant table (v2). [default: $TENANT_CONFIG_TABLE]")
@click.option(
    "--tls-cert",
    envvar="TENANT_API_TLS_CERT",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM certificate (chain) to serve HTTPS with. [env: TENANT_API_TLS_CERT]",
)
@click.option(
    "--tls-key",
    envvar="TENANT_API_TLS_KEY",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM private key of --tls-cert. [env: TENANT_API_TLS_KEY]",
)
@click.option(
    "--plain-http",
    is_flag=True,
    help="Serve plain HTTP on an address other than loopback (refused without this flag: signatures do not "
    "hide the bodies, which hold tenants' accounts and ExternalIds).",
)
@click.option("--log-level", default="INFO", show_default=True, help="Structured log level (JSON on stderr).")
def serve_command(
    host: str, port: int, table: str | None, tls_cert: str | None, tls_key: str | None, plain_http: bool, log_level: str
) -> None:
    """Serve the tenant management API (CONTRACTS.md §9) with uvicorn: every request but /healthz and
    /openapi.json must be signed with one of the keys (HMAC-SHA256, see docs/TENANTS.md). Each change is
    an audit log line (who, what, before and after; never a key). With --tls-cert and --tls-key it serves
    HTTPS only (in a cluster: the Secret OpenShift's service-ca writes, k8s/consumer/tenant-api.yaml)."""
    logs.setup(log_level)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if not tls_cert and not plain_http and not _is_loopback(host):
        raise click.UsageError(f"--host {host} without --tls-cert/--tls-key: give both, or --plain-http")
    # The web stack is imported only here: the other commands do not need it.
    import uvicorn

    from pipeline.api.server import app_from_env

    with _configuration():
        app = app_from_env(table=table)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Commands kept in their own modules, which reuse the helpers above: registered once those exist.
from pipeline.commands.tenant_status import status_command  # noqa: E402

main.add_command(status_command)

main.add_command(replay)  # log-tenants replay start|show|list|stop (pipeline/commands/replays.py)

if __name__ == "__main__":
    main()
