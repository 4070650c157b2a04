"""Admin commands: ``privatai accounts|keys|usage|admins|migrate ...``.

:func:`register` adds the subcommands to the main CLI's subparsers; each
parser sets ``func(args) -> int``. Errors the operator can fix (unknown
names, duplicates, bad dates, ambiguous prefixes, an unusable config) are one
line on stderr and exit code 2, never a traceback. Keys are printed only by
``keys create``, once; nothing prints a key's hash.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import sqlalchemy.exc

from privatai.config import StoreConfig, default_plans, load_config
from privatai.errors import ConfigError
from privatai.plans.status import STATUSES
from privatai.portal.passwords import hash_password, password_problem
from privatai.store.audit_log import AuditLog
from privatai.store.connection import reason
from privatai.store.people import People, User
from privatai.store.database import Store
from privatai.store.names import LABEL_MAX, PLAN_MAX, AdminError, checked, printable, quoted
from privatai.store.records import DEFAULT_PLAN, UsageRow

Handler = Callable[[argparse.Namespace, Store], Awaitable[int]]


class UsageError(Exception):
    """A bad argument value found after parsing (a date, say)."""


class StripeFailed(Exception):
    """Stripe did not do what a command needs first (cancel a subscription): exit 1."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``accounts``, ``keys`` and ``usage`` to the main parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="backends.yaml", metavar="PATH",
                        help="configuration file naming the database (default: backends.yaml)")
    common.add_argument("--db", metavar="PATH", help="SQLite database file, overriding the configuration")

    accounts = subparsers.add_parser("accounts", help="manage accounts")
    accounts_sub = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    parser = _command(accounts_sub, common, "create", "create an account", _accounts_create)
    parser.add_argument("name")
    parser.add_argument("--plan", default=DEFAULT_PLAN, help=f"plan name (default: {DEFAULT_PLAN})")
    _command(accounts_sub, common, "list", "list accounts", _accounts_list)
    parser = _command(accounts_sub, common, "suspend", "suspend an account: its keys get 403",
                      _accounts_suspend)
    parser.add_argument("name")
    parser = _command(accounts_sub, common, "activate", "reactivate a suspended account, or approve a pending one",
                      _accounts_activate)
    parser.add_argument("name")
    parser = _command(accounts_sub, common, "set-plan", "move an account to another plan of the configuration",
                      _accounts_set_plan)
    parser.add_argument("name")
    parser.add_argument("plan")
    parser = _command(accounts_sub, common, "set-status",
                      "set an account's status: active and past_due are served; inactive, pending "
                      "and suspended get 403", _accounts_set_status)
    parser.add_argument("name")
    parser.add_argument("status", choices=STATUSES)
    parser = _command(accounts_sub, common, "delete", "erase an account at once with its keys, usage, members "
                      "and invitations (DSGVO Art. 17)", _accounts_delete)
    parser.add_argument("name")
    parser.add_argument("--yes", action="store_true", help="really delete (there is no undo)")

    admins = subparsers.add_parser("admins", help="people who may use the website's operator pages")
    admins_sub = admins.add_subparsers(dest="action", required=True, metavar="ACTION")
    parser = _command(admins_sub, common, "grant", "make a person an operator admin; a new address "
                      "gets a confirmed login with the password read from stdin", _admins_grant)
    parser.add_argument("email")
    _command(admins_sub, common, "list", "list operator admins", _admins_list)
    parser = _command(admins_sub, common, "revoke", "take the admin role away", _admins_revoke)
    parser.add_argument("email")

    keys = subparsers.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    parser = _command(keys_sub, common, "create", "create a key (shown once)", _keys_create)
    parser.add_argument("account")
    parser.add_argument("--label", default="", help="what the key is for, e.g. a person or a server")
    parser.add_argument("--expires", metavar="YYYY-MM-DD",
                        help="the key stops working at 00:00 UTC on this day")
    parser = _command(keys_sub, common, "list", "list keys (never the key itself)", _keys_list)
    parser.add_argument("account", nargs="?")
    parser = _command(keys_sub, common, "revoke", "revoke a key at once", _keys_revoke)
    parser.add_argument("key", metavar="PREFIX_OR_ID", help="key id, display prefix, or the full key")

    parser = _command(subparsers, common, "usage", "token usage per account or key", _usage)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--account", metavar="NAME", help="per key of this account")
    scope.add_argument("--key", metavar="PREFIX_OR_ID", help="this key only")
    parser.add_argument("--since", metavar="YYYY-MM-DD", help="first UTC day, inclusive")
    parser.add_argument("--until", metavar="YYYY-MM-DD", help="last UTC day, inclusive")
    parser.add_argument("--by-model", action="store_true", help="one row per model")

    _command(subparsers, common, "migrate", "bring the database schema to this release (the server "
             "also does it when it starts)", _migrate)


def _command(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser,  # type: ignore[type-arg]
             name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=help, parents=[common])
    parser.set_defaults(func=lambda args: _run(handler, args))
    return parser


def _run(handler: Handler, args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_with_store(handler, args))
    except (AdminError, ConfigError, UsageError) as exc:
        print(f"privatai: error: {exc}", file=sys.stderr)
        return 2
    except sqlalchemy.exc.SQLAlchemyError as exc:
        print(f"privatai: database error: {reason(exc)}", file=sys.stderr)
        return 1
    except StripeFailed as exc:
        print(f"privatai: error: {exc}", file=sys.stderr)
        return 1


async def _announce(args: argparse.Namespace) -> None:
    """After a key or account change: running instances hear of it through Redis at once."""
    if args.db:
        return
    state = load_config(args.config).state
    if not state.shared:
        return
    from privatai.limits.redis_link import announce_auth_change  # redis-py only when configured
    if await announce_auth_change(state):
        return
    print("privatai: warning: Redis (state.redis_url) is unreachable: running servers notice the "
          "change when their authentication cache refreshes, not at once.", file=sys.stderr)


async def _with_store(handler: Handler, args: argparse.Namespace) -> int:
    store = await Store.from_config(StoreConfig(path=args.db) if args.db else load_config(args.config).store)
    try:
        return await handler(args, store)
    finally:
        await store.close()


def _date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option}: {quoted(value)} is not a date like 2025-12-31") from None


# ---------------------------------------------------------------------- accounts

def _offered_plan(args: argparse.Namespace, plan: str) -> str:
    """``plan`` if the configuration offers it (the built-in plans when only
    --db names the database and there is no configuration file)."""
    plan = checked(plan, "plan", PLAN_MAX)  # the store's rule first: its message is the clearer one
    config = Path(args.config)
    plans = load_config(config).plans if not args.db or config.exists() else default_plans()
    names = [p.name for p in plans]
    if plan not in names:
        raise AdminError(f"no plan named {quoted(plan)} in the configuration; offered: {', '.join(names)}")
    return plan


async def _accounts_create(args: argparse.Namespace, store: Store) -> int:
    account = await store.create_account(args.name, _offered_plan(args, args.plan))
    print(f"Created account {quoted(account.name)} (plan {account.plan}).")
    return 0


async def _accounts_list(args: argparse.Namespace, store: Store) -> int:
    accounts = await store.list_accounts()
    if not accounts:
        print("No accounts yet. Create one with: privatai accounts create NAME")
        return 0
    keys = await store.list_keys()
    active = {a.id: sum(1 for k in keys if k.account_id == a.id and k.status == "active") for a in accounts}
    print(_table(["ID", "NAME", "PLAN", "STATUS", "ACTIVE KEYS", "CREATED"],
                 [[str(a.id), a.name, a.plan, a.status, active[a.id], a.created] for a in accounts]))
    return 0


async def _accounts_suspend(args: argparse.Namespace, store: Store) -> int:
    account = await store.set_account_status(args.name, "suspended")
    await _announce(args)
    print(f"Suspended account {quoted(account.name)}: its keys now get 403.")
    return 0


async def _accounts_activate(args: argparse.Namespace, store: Store) -> int:
    account = await store.set_account_status(args.name, "active")
    await _announce(args)
    print(f"Activated account {quoted(account.name)}.")
    return 0


async def _accounts_set_plan(args: argparse.Namespace, store: Store) -> int:
    account = await store.set_account_plan(args.name, _offered_plan(args, args.plan))
    print(f"Account {quoted(account.name)} is now on plan {account.plan}; a running server applies it "
          "within seconds.")
    return 0


async def _accounts_set_status(args: argparse.Namespace, store: Store) -> int:
    account = await store.set_account_status(args.name, args.status)
    print(f"Account {quoted(account.name)} is now {account.status}; a running server applies it within seconds.")
async def _accounts_delete(args: argparse.Namespace, store: Store) -> int:
    if not args.yes:
        raise UsageError(f"this erases account {quoted(args.name)} with its keys and usage; "
                         "add --yes to do it")
    await _cancel_subscriptions(args, store, (await store.get_account(args.name)).id)
    account = await store.delete_account(args.name)
    await AuditLog(store._db).record("cli", "delete_account", f"account:{account.id}")
    print(f"Deleted account {quoted(account.name)} (id {account.id}) with its keys, usage and members. "
          "Running servers refuse its keys within a second.")
    return 0


async def _cancel_subscriptions(args: argparse.Namespace, store: Store, account_id: int) -> None:
    """With billing.mode stripe, end the account's Stripe subscriptions before it goes."""
    config = Path(args.config)
    if args.db and not config.exists():
        return
    from privatai.billing.cancel import cancel_with_own_client  # stripe-python only when it is needed
    from privatai.billing.errors import SubscriptionsNotCancelled
    try:
        count = await cancel_with_own_client(load_config(config).billing, store, [account_id])
    except SubscriptionsNotCancelled as exc:
        raise StripeFailed(str(exc)) from None
    if count:
        print(f"Cancelled {count} Stripe subscription(s) of the account.")


# ---------------------------------------------------------------------- admins

async def _admin(store: Store, email: str) -> tuple[People, User]:
    people = People(store._db)
    user = await people.user_by_email(email)
    if user is None:
        raise AdminError(f"nobody is registered as {quoted(email)}")
    return people, user


async def _admins_grant(args: argparse.Namespace, store: Store) -> int:
    people = People(store._db)
    user = await people.user_by_email(args.email)
    if user is None:
        password = (getpass.getpass("Password for the new admin: ") if sys.stdin.isatty()
                    else sys.stdin.readline().rstrip("\n"))
        problem = password_problem(password, args.email)
        if problem:
            raise UsageError(f"password refused ({problem.replace('_', ' ')})")
        user = await people.create_user(args.email, await hash_password(password), confirmed=True)
    await people.set_admin(user.id, True)
    await AuditLog(store._db).record("cli", "grant_admin", f"user:{user.id}")
    print(f"{quoted(user.email)} (user {user.id}) is an operator admin: the website's /admin is theirs.")
    return 0


async def _admins_list(args: argparse.Namespace, store: Store) -> int:
    admins = await People(store._db).admins()
    if not admins:
        print("No operator admins yet. Make one with: privatai admins grant EMAIL")
        return 0
    print(_table(["ID", "EMAIL", "CONFIRMED", "SECOND FACTOR"],
                 [[str(u.id), u.email, u.confirmed_at or "no", "yes" if u.totp_secret else "no"] for u in admins]))
    return 0


async def _admins_revoke(args: argparse.Namespace, store: Store) -> int:
    people, user = await _admin(store, args.email)
    await people.set_admin(user.id, False)
    await AuditLog(store._db).record("cli", "revoke_admin", f"user:{user.id}")
    print(f"{quoted(user.email)} is no longer an operator admin.")
    return 0


# ---------------------------------------------------------------------- keys

async def _keys_create(args: argparse.Namespace, store: Store) -> int:
    expires = _date(args.expires, "--expires")
    created = await store.create_key(
        args.account, label=args.label,
        expires_at=datetime(expires.year, expires.month, expires.day, tzinfo=timezone.utc) if expires else None)
    info = created.info
    # The key alone on stdout (so scripts can capture it), the notes on stderr.
    print(f"Created key {info.prefix}… (id {info.id}) for account {quoted(info.account_name)}"
          + (f", label {quoted(info.label)}" if info.label else "")
          + (f", expires {info.expires_at} UTC" if info.expires_at else "") + ":", file=sys.stderr)
    print(created.key)
    print("Store it now: it is shown only this once and cannot be recovered.", file=sys.stderr)
    return 0


async def _keys_list(args: argparse.Namespace, store: Store) -> int:
    keys = await store.list_keys(args.account)
    if not keys:
        print("No keys." if args.account is None else f"No keys for account {quoted(args.account)}.")
        return 0
    print(_table(["ID", "PREFIX", "LABEL", "ACCOUNT", "CREATED", "LAST USED", "EXPIRES", "STATUS"],
                 [[str(k.id), k.prefix + "…", k.label, k.account_name, k.created, k.last_used or "never",
                   k.expires_at or "-", k.status] for k in keys]))
    return 0


async def _keys_revoke(args: argparse.Namespace, store: Store) -> int:
    key = await store.revoke_key(args.key)
    await _announce(args)
    print(f"Revoked key {key.prefix}… (id {key.id}) of account {quoted(key.account_name)}; "
          "a running server refuses it within seconds.")
    return 0


# ---------------------------------------------------------------------- schema

async def _migrate(args: argparse.Namespace, store: Store) -> int:
    migration = store.migration
    assert migration is not None
    if migration.changed:
        print(f"Migrated the {store.kind} database to schema revision {migration.after}"
              f" (from {migration.before or 'an empty database'}).")
    else:
        print(f"The {store.kind} database is at schema revision {migration.after}, this release's: nothing to do.")
    return 0


# ---------------------------------------------------------------------- usage

async def _usage(args: argparse.Namespace, store: Store) -> int:
    since, until = _date(args.since, "--since"), _date(args.until, "--until")
    if since and until and since > until:
        raise UsageError(f"--since {since} is after --until {until}")
    rows = await store.usage_report(account_name=args.account, key_reference=args.key,
                                    since=since, until=until, by_model=args.by_model)
    period = f"{since or 'first day'} to {until or 'today'} (UTC days)"
    if not rows:
        print(f"No usage recorded, {period}.")
        return 0
    per_key = args.account is not None or args.key is not None
    headers = ["ACCOUNT"] + (["KEY", "LABEL"] if per_key else []) + (["MODEL"] if args.by_model else []) \
        + ["REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "LAST USED"]
    table = [_usage_cells(row, per_key, args.by_model) for row in rows]
    if len(rows) > 1:
        total = UsageRow("TOTAL", "", "", "", sum(r.requests for r in rows),
                         sum(r.prompt_tokens for r in rows), sum(r.completion_tokens for r in rows),
                         max((r.last_used for r in rows if r.last_used), default=None))
        table.append(_usage_cells(total, per_key, args.by_model))
    print(f"Usage, {period}:")
    print(_table(headers, table, separator_before_last=len(rows) > 1))
    return 0


def _usage_cells(row: UsageRow, per_key: bool, by_model: bool) -> list[Any]:
    cells: list[Any] = [row.account_name]
    if per_key:
        cells += [f"{row.key_prefix}…" if row.key_prefix else "", row.key_label or ""]
    if by_model:
        cells.append(row.model or "")
    return cells + [row.requests, row.prompt_tokens, row.completion_tokens, row.tokens_used,
                    row.last_used or "never"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, separator_before_last: bool = False) -> str:
    """Columns aligned; numbers right-aligned with thousands separators; text
    escaped and shortened, since names stored by an older release may hold
    control characters or be very long."""
    cells = [[f"{v:,}" if isinstance(v, int) else printable(str(v), LABEL_MAX) for v in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    for i, row in enumerate(cells):
        if separator_before_last and i == len(cells) - 1:
            out.append(line(["-" * w for w in widths]))
        out.append(line(row))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the admin commands alone (``python -m privatai.ops.admin_cli``)."""
    parser = argparse.ArgumentParser(prog="privatai", description="PrivatAI administration")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
