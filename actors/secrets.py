"""The server's secrets: where they come from, how a job receives them, and masking.

A secret is a name and a value, read once when the server starts: every file
of `SECRETS_DIR` (its name is the secret's name, its content the value, less
one trailing newline) and every `WFG_SECRET_<NAME>` variable of the server's
environment (which wins over a file of the same name). Names are
case-insensitive, as GitHub's are, and kept upper-cased.

A definition reads a secret as `${{ secrets.NAME }}` in an `env` value, and
nowhere else. The run's expression context maps each name the definition
reads to a *placeholder*, that same text, so what a run stores and what any
read API shows holds the placeholder, never the value. The value replaces
the placeholder only in the claim a worker receives (`reveal`), and only for
the names the job's own definition reads, so an input that smuggles a
placeholder into an env value gets a job no secret it was not given anyway.

Logs pushed for a job are masked before they are stored or streamed: every
occurrence of a secret value the job received becomes `***`, also when the
worker's chunks cut a value in two (`mask_text`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Invalid
from .models import LogChunk, LogStream

log = logging.getLogger("workflow_graph")

MASK = "***"
ENV_PREFIX = "WFG_SECRET_"
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `${{ secrets.NAME }}` (any spacing) and `secrets['NAME']` inside an expression.
_PLACEHOLDER = re.compile(r"\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_REFERENCE = re.compile(
    r"\bsecrets\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*'([A-Za-z_][A-Za-z0-9_]*)'\s*\])"
)


class SecretsError(ValueError):
    """`SECRETS_DIR` cannot be read; the message names it."""


def placeholder(name: str) -> str:
    """What a run's context gives for `secrets.NAME`: the reference itself."""
    return f"${{{{ secrets.{name.upper()} }}}}"


def referenced(values: Iterable[str]) -> frozenset[str]:
    """The secret names (upper-cased) the given definition texts read."""
    names: set[str] = set()
    for value in values:
        if "secrets" in value:
            for dotted, quoted in _REFERENCE.findall(value):
                names.add((dotted or quoted).upper())
    return frozenset(names)


def job_references(job: Any) -> frozenset[str]:
    """The secret names a job's definition reads: in its env, and its steps' env."""
    texts = list(getattr(job, "env", {}).values())
    for step in getattr(job, "steps", None) or ():
        texts.extend((getattr(step, "env", None) or {}).values())
    return referenced(texts)


def context_placeholders(spec: Any) -> dict[str, str]:
    """`ctx["secrets"]` of a run of `spec`: a placeholder per name its jobs read."""
    names: set[str] = set()
    for job in spec.jobs:
        if job.env or getattr(job, "steps", None):
            names |= job_references(job)
    return {name: placeholder(name) for name in sorted(names)}


@dataclass(frozen=True)
class SecretStore:
    """The server's secrets by (upper-cased) name. Empty: a server without secrets."""

    values: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> frozenset[str]:
        """What a definition may read, for the definition parser's check."""
        return frozenset(self.values)

    @classmethod
    def load(
        cls, directory: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> SecretStore:
        """Read `directory` (if given) and the `WFG_SECRET_<NAME>` variables of `environ`.

        Hidden files (Kubernetes keeps its bookkeeping in `..data`) and
        subdirectories are passed over; a file whose name is not a valid
        secret name is passed over with a warning.
        """
        values: dict[str, str] = {}
        if directory is not None:
            values.update(_read_dir(Path(directory)))
        for key, value in (os.environ if environ is None else environ).items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :]
            if not NAME_PATTERN.fullmatch(name):
                log.warning("%s: %r is not a valid secret name; ignored", key, name)
                continue
            values[name.upper()] = value
        return cls(values)

    def missing(self, names: Iterable[str]) -> list[str]:
        return sorted(n for n in names if n not in self.values)

    def check_spec(self, spec: Any) -> None:
        """Refuse to start a run of a definition that reads a secret this server lacks."""
        wanted: set[str] = set()
        for job in spec.jobs:
            wanted |= job_references(job)
        missing = self.missing(wanted)
        if missing:
            shown = ", ".join(missing)
            raise Invalid(f"the run cannot start: secret(s) not set on this server: {shown}")

    def reveal(
        self, env: Mapping[str, str], allowed: Iterable[str]
    ) -> tuple[dict[str, str], list[str]]:
        """`env` with the placeholders of the `allowed` names replaced by their values,
        and the values given (what the job's logs are masked with). A placeholder of
        a name not allowed is left as it is; one of a secret no longer set becomes
        empty, as GitHub gives an unset secret, with a warning."""
        allowed = frozenset(allowed)
        given: dict[str, str] = {}

        def value_of(match: re.Match[str]) -> str:
            name = match[1].upper()
            if name not in allowed:
                return match[0]
            value = self.values.get(name)
            if value is None:
                log.warning("secret %s is no longer set on this server; the job gets ''", name)
                return ""
            given[name] = value
            return value

        revealed = {
            key: _PLACEHOLDER.sub(value_of, value) if "secrets" in value else value
            for key, value in env.items()
        }
        return revealed, list(given.values())


def _read_dir(directory: Path) -> dict[str, str]:
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise SecretsError(f"SECRETS_DIR {directory}: {exc.strerror}") from None
    values: dict[str, str] = {}
    for path in entries:
        if path.name.startswith(".") or path.is_dir():
            continue
        if not NAME_PATTERN.fullmatch(path.name):
            log.warning(
                "SECRETS_DIR: %r is not a valid secret name ([A-Za-z_][A-Za-z0-9_]*); ignored",
                path.name,
            )
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretsError(f"SECRETS_DIR: cannot read {path}: {exc}") from None
        # `echo value > file` and `docker secret create` leave a newline after the value.
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        values[path.name.upper()] = text
    return values


# --- masking -------------------------------------------------------------------


class Masker:
    """Masks the secret values one job received, in everything it reports.

    Each line of a multi-line value is masked on its own too, as GitHub does,
    so a key printed line by line is hidden as well.
    """

    def __init__(self, values: Iterable[str]) -> None:
        patterns: set[str] = set()
        for value in values:
            if value:
                patterns.add(value)
                if "\n" in value:
                    patterns.update(line.rstrip("\r") for line in value.split("\n"))
        patterns.discard("")
        # Longest first: at one position the whole value wins over a line of it.
        self.values = sorted(patterns, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self.values))

    def __bool__(self) -> bool:
        return bool(self.values)

    def mask(self, text: str) -> str:
        """Every whole occurrence of a value in `text` as `***`."""
        return self._pattern.sub(MASK, text) if self.values else text

    def mask_text(self, held: str, text: str) -> tuple[str, str]:
        """(what may be stored now, what to hold back) for `text` pushed after `held`.

        Only the longest end of the text that could still become a value with
        the next push is held back; it is passed as `held` with the next text
        of the same stream, and written out (`held` alone) when the attempt ends.
        """
        masked = self.mask(held + text)
        keep = _open_prefix(masked, self.values)
        if keep:
            return masked[:-keep], masked[-keep:]
        return masked, ""

    def mask_mapping(self, values: Mapping[str, str]) -> dict[str, str]:
        return {key: self.mask(value) for key, value in values.items()}


def mask_chunks(
    masker: Masker, held: dict[str, str], chunks: list[LogChunk], sequence: int
) -> tuple[list[LogChunk], int]:
    """One attempt's pushed chunks with every secret value masked; what may be the start
    of one is held back in `held` (per stream, updated in place) and goes out with that
    stream's next chunk. Returns the chunks and the highest sequence seen so far."""
    masked = []
    for chunk in chunks:
        data, held[chunk.stream] = masker.mask_text(held.get(chunk.stream, ""), chunk.data)
        sequence = max(sequence, chunk.sequence)
        masked.append(chunk.model_copy(update={"data": data}))
    return masked, sequence


def held_tail(
    held: Mapping[str, str],
    sequence: int,
    workflow_id: str,
    job_id: str,
    attempt: int,
    now: int,
) -> list[LogChunk]:
    """The attempt is over: what was held back is no secret after all. Each stream's
    text as its last chunk, numbered on from `sequence`."""
    tail = []
    for stream, text in held.items():
        if text:
            sequence += 1
            tail.append(
                LogChunk(
                    workflow_id=workflow_id,
                    job_id=job_id,
                    sequence=sequence,
                    data=text,
                    timestamp_ms=now,
                    stream=LogStream(stream),
                    attempt=attempt,
                )
            )
    return tail


def _open_prefix(text: str, values: list[str]) -> int:
    """Length of the longest end of `text` that is a proper beginning of a value."""
    best = 0
    for value in values:
        if len(value) - 1 <= best:
            continue  # sorted longest first: no shorter value can beat `best`
        start = max(0, len(text) - len(value) + 1)
        first = value[0]
        i = text.find(first, start)
        while i != -1:
            if len(text) - i <= best:
                break
            if value.startswith(text[i:]):
                best = len(text) - i
                break
            i = text.find(first, i + 1)
    return best


__all__ = [
    "MASK",
    "Masker",
    "SecretStore",
    "SecretsError",
    "context_placeholders",
    "job_references",
    "placeholder",
    "referenced",
]
