"""What an operator may call things (account names, key labels, plans), and
how stored values are shown safely.

The rule is enforced where values enter the store, so every caller (the CLI
today, a portal tomorrow) gets it: bounded length, and only printable
characters, because names and labels are printed in terminal tables where an
escape sequence would act on the terminal and a newline would break the table.
Values stored before the rule existed are escaped and shortened on output.
"""
from __future__ import annotations

NAME_MAX = 64
LABEL_MAX = 100
PLAN_MAX = 32
# Of a value quoted in a message (an unknown name, a key reference).
_QUOTE_MAX = 64


class AdminError(Exception):
    """An admin operation cannot be done (unknown name, duplicate, ambiguous
    prefix, a name breaking the rules...): a one-line message for the operator."""


class StoreUnavailable(AdminError):
    """The database cannot be opened: where it is (never a password) and why, in one line."""


def checked(value: str, what: str, limit: int, *, required: bool = True) -> str:
    """``value`` without surrounding white space, or AdminError naming the rule it breaks."""
    value = value.strip()
    if required and not value:
        raise AdminError(f"{what} must not be empty")
    if len(value) > limit:
        raise AdminError(f"{what} must be at most {limit} characters (got {len(value):,})")
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise AdminError(f"{what} must not contain control or invisible characters "
                         f"(found U+{ord(bad):04X})")
    return value


def printable(value: str, limit: int) -> str:
    """``value`` for a terminal: unprintable characters escaped (``\\x1b``,
    ``\\n``), cut at ``limit`` characters with an ellipsis."""
    if len(value) > limit:
        value = value[:limit] + "…"
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)


def quoted(value: str) -> str:
    """``value`` quoted for a one-line message, escaped and shortened."""
    return "'" + printable(value, _QUOTE_MAX).replace("'", "\\'") + "'"
