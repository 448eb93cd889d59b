"""Revoking many certificates at once: a compromised issuing CA, a leaked deploy key, a bad batch.

Each certificate is revoked through :func:`ca.revocation.revoke`, in its own transaction with its
own ``certificate.revoked`` event, so a run killed halfway leaves every revocation it made
complete and audited; running it again with the same list skips those (``already_revoked``) and
finishes the rest. A ``certificate.bulk_revocation`` event then records the whole run: the
reason, the counts and the SHA-256 of the serial list, so an auditor can tie the list kept on
file to the individual events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ca.authority import Authority, normalize_serial
from ca.errors import CAError, Conflict, NotFound
from ca.revocation import LEAF_REASONS, AfterRevoke, reason_code, revoke
from ca.store import crls

MAX_SERIALS = 1_000_000


@dataclass(frozen=True)
class SerialList:
    """A parsed list of serials: canonical, de-duplicated, in the order given."""

    serials: tuple[str, ...]
    bad_lines: tuple[tuple[int, str], ...]  # (line number, text) that are not serials

    @property
    def sha256(self) -> str:
        """Hash of the canonical list, one serial per line: what the audit event cites."""
        return hashlib.sha256("".join(s + "\n" for s in self.serials).encode()).hexdigest()


@dataclass(frozen=True)
class BulkRevocation:
    """What a bulk revocation did, serial by serial."""

    revoked: tuple[str, ...]
    already_revoked: tuple[str, ...]
    unknown: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]  # (serial, why): e.g. the certificate of a CA
    hook_errors: int
    issuers: tuple[str, ...]  # CAs whose CRLs now list new serials

    @property
    def complete(self) -> bool:
        """Every serial of the list is now revoked (by this run or an earlier one)."""
        return not self.unknown and not self.refused


def parse_serial_list(lines: Iterable[str]) -> SerialList:
    """Serials one per line (hex, colons allowed); blank lines and ``#`` comments are skipped.

    A JSON line of ``hsmca cert list`` is accepted too (its ``serial`` is taken), so the
    inventory's output can be filtered and fed back as it is.
    """
    import json

    seen: dict[str, None] = {}
    bad: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                line = str(json.loads(line)["serial"])
            except (ValueError, KeyError, TypeError):
                bad.append((number, raw.strip()[:80]))
                continue
        try:
            serial = normalize_serial(line)
        except NotFound:
            bad.append((number, raw.strip()[:80]))
            continue
        seen.setdefault(serial, None)
        if len(seen) > MAX_SERIALS:
            raise CAError(f"more than {MAX_SERIALS} serials in one list; split it")
    return SerialList(tuple(seen), tuple(bad))


def revoke_many(
    auth: Authority,
    serials: SerialList,
    reason: str,
    actor: str,
    comment: str = "",
    after: Sequence[AfterRevoke] = (),
    progress: Callable[[int, int], None] | None = None,
) -> BulkRevocation:
    """Revoke every serial of ``serials`` for ``reason``; see the module docstring.

    The reason is checked before anything changes. Unknown serials and certificates of CAs are
    reported, not revoked, and never stop the run.
    """
    reason_code(reason, LEAF_REASONS)  # BadRequest before the first revocation
    revoked: list[str] = []
    already: list[str] = []
    unknown: list[str] = []
    refused: list[tuple[str, str]] = []
    issuers: dict[str, None] = {}
    hook_errors = 0
    total = len(serials.serials)
    for done, serial in enumerate(serials.serials, 1):
        try:
            result = revoke(auth, serial, reason, actor, comment=comment, after=after)
        except NotFound:
            unknown.append(serial)
        except Conflict as exc:
            if _is_revoked(auth, serial):
                already.append(serial)
            else:
                refused.append((serial, str(exc)))
        else:
            revoked.append(serial)
            issuers.setdefault(result.issuer, None)
            hook_errors += bool(result.hook_errors)
        if progress is not None:
            progress(done, total)
    outcome = BulkRevocation(
        tuple(revoked), tuple(already), tuple(unknown), tuple(refused), hook_errors, tuple(issuers)
    )
    details: dict[str, object] = {
        "reason": reason,
        "serials": total,
        "serials_sha256": serials.sha256,
        "revoked": len(outcome.revoked),
        "already_revoked": len(outcome.already_revoked),
        "unknown": len(outcome.unknown),
        "refused": len(outcome.refused),
        "issuers": list(outcome.issuers),
    }
    if comment:
        details["comment"] = comment
    auth.audit(actor, "certificate.bulk_revocation", serials.sha256, details)
    return outcome


def _is_revoked(auth: Authority, serial: str) -> bool:
    with auth.db.read() as conn:
        state = crls.revocation_state(conn, serial)
    return state is not None and state.revoked_at is not None
