"""pydantic models of the spec documents: validation only, no I/O.

Every model refuses unknown fields, so a typo (`filterWithDep`) is an error and not a
silently ignored setting. Paths in specs (keyrings, signing keys, `file:` URLs) are
kept as written here; the loader resolves them against the spec file's directory.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from datetime import timedelta
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_serializer, model_validator

API_VERSION = "reconciler/v1"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=200)]
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`30s`, `10m`, `12h`, `1d`, `2w` → timedelta; anything else is a ValueError."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 10m, 12h, 1d, 2w)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Metadata(Strict):
    name: Name = Field(description="Lower case letters, digits, '.', '_', '-'; unique per kind")
    renamedFrom: Name | None = Field(
        None, description="The object's previous name: the stored mirror or snapshot is renamed in place "
                          "(its list and pool files kept) instead of dropped and created again")
    protect: bool = Field(False, description="Refuse to drop the object when it is no longer declared, even "
                                             "with --force (apply it with protect: false first)")


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)

# What state keeps of a secret (a header value, a proxy URL's user:password): a digest,
# never the value, so state.db, `show`, the API and the logs cannot give it away. The
# value a download uses always comes from the spec being applied (its ${VAR} read from
# the environment). The digest is deterministic, so a plan compares the stored digest
# with the desired value's: an unchanged secret is no change, a changed one an edit.
# The fixed prefix keeps a table of plain SHA-256 digests from matching it.
SECRET_DIGEST = "sha256:"
_SECRET_DOMAIN = b"reconciler/v1 secret\0"


def secret_digest(value: str) -> str:
    """`sha256:` and the hex SHA-256 of the value (after a fixed prefix)."""
    return SECRET_DIGEST + hashlib.sha256(_SECRET_DOMAIN + value.encode()).hexdigest()


def redact_url(url: str) -> str:
    """`url` with its user:password, if any, replaced by their digest."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{secret_digest(userinfo)}@{host}"))


def redacted_fields(stored: dict) -> list[str]:
    """The fields of a stored mirror spec whose secrets state holds only as digests: such
    a spec cannot be used to download (its secrets must come from a declared spec)."""
    network = stored.get("network") or {}
    found = []
    if any(str(v).startswith(SECRET_DIGEST) for v in (network.get("headers") or {}).values()):
        found.append("network.headers")
    if network.get("proxy") and urllib.parse.urlsplit(network["proxy"]).netloc.startswith(SECRET_DIGEST):
        found.append("network.proxy")
    return found


class Network(Strict):
    """How requests to the upstream behave: deadlines, retries, proxy, TLS, headers, rate.

    Every request has two bounds: no byte for `idleTimeout` fails it, and so does falling
    below `minRate` on average after the first `idleTimeout`, which makes the overall
    deadline of a file of N bytes `idleTimeout + N / minRate`. A failed request is tried
    `retries` more times, with backoff.

    None of these fields changes what a mirror holds, only how it is fetched: editing
    them updates the stored spec without a re-sync. The fields added after `retries`
    are left out of the stored form while at their defaults, so a mirror stored before
    they existed does not look edited."""

    idleTimeout: str = Field("30s", description="No byte for this long fails a request (30s, 2m)")
    minRate: int = Field(4096, ge=1, description="Bytes per second a download must average")
    retries: int = Field(4, ge=0, le=20, description="Further attempts after a network failure")
    proxy: str | None = Field(None, description="http://[USER:PASSWORD@]HOST:PORT for every request of this "
                                                "mirror, or \"\" for none; default: http_proxy, https_proxy "
                                                "and no_proxy from the environment. State keeps only a digest "
                                                "of USER:PASSWORD")
    caFile: str | None = Field(None, description="PEM bundle of the CAs trusted for https (replaces the "
                                                 "system's trust store for this mirror); relative to the spec file")
    clientCertFile: str | None = Field(None, description="PEM client certificate for mutual TLS (may hold the "
                                                         "key too); relative to the spec file")
    clientKeyFile: str | None = Field(None, description="PEM private key of clientCertFile; relative to the "
                                                        "spec file")
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="Extra request headers, sent to the mirror's own host only; "
                                                "state keeps only a digest of each value (write secrets as "
                                                "${VAR})")
    maxRate: int | None = Field(None, ge=1, description="Bytes per second for the whole mirror, all download "
                                                       "threads together; default: unlimited")

    @field_validator("idleTimeout")
    @classmethod
    def _idle(cls, value: str) -> str:
        if parse_duration(value).total_seconds() < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        if value:
            parts = urllib.parse.urlsplit(value)
            if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
                raise ValueError("must be http://[USER:PASSWORD@]HOST[:PORT], or \"\" for no proxy")
            try:
                _ = parts.port  # raises on a bad port
            except ValueError as exc:
                raise ValueError(f"bad port: {exc}") from None
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r}: not a valid header name")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"{name}: the value must not contain CR, LF or NUL")
            if name.lower() in ("host", "range", "content-length", "transfer-encoding", "connection"):
                raise ValueError(f"{name}: set by the client itself, cannot be overridden")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Network:
        if self.clientKeyFile and not self.clientCertFile:
            raise ValueError("clientKeyFile: needs clientCertFile")
        if self.maxRate is not None and self.maxRate < self.minRate:
            raise ValueError(f"maxRate: {self.maxRate} is below minRate ({self.minRate}): every download "
                             "would fail as too slow")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        for name, default in _NETWORK_LATER.items():
            if name in out and out[name] == default:
                del out[name]
        return out

    def with_paths(self, resolve) -> Network:
        """This network with its file paths passed through `resolve` (the loader's)."""
        files = ("caFile", "clientCertFile", "clientKeyFile")
        return self.model_copy(update={f: resolve(getattr(self, f)) for f in files if getattr(self, f)})

    @property
    def idle_seconds(self) -> float:
        return parse_duration(self.idleTimeout).total_seconds()


_NETWORK_LATER: dict[str, object] = {"proxy": None, "caFile": None, "clientCertFile": None, "clientKeyFile": None,
                  "headers": {}, "maxRate": None}


class Limits(Strict):
    """Upper bounds on what an upstream may make us read, whatever its signed files claim."""

    maxReleaseBytes: int = Field(8 << 20, ge=1 << 10, description="InRelease, Release, Release.gpg")
    maxIndexBytes: int = Field(1 << 30, ge=1 << 10,
                               description="One index (Packages, Sources), compressed or decompressed")
    maxStanzaBytes: int = Field(1 << 20, ge=1 << 10, description="One stanza (and so one line) of an index")


class MirrorSpec(Strict):
    url: str = Field(description="Archive root: http://, https://, file:// (or file:RELATIVE to the spec file)")
    distribution: str = Field(description="Suite or codename; ending in '/' means a flat repository")
    components: list[str] | None = Field(None, description="Default: all in the Release file")
    architectures: list[str] | None = Field(None, description="Default: all in the Release file")
    filter: str | None = Field(None, description="aptly package query, e.g. 'hello | Priority (required)'; "
                                                 "only matching packages are mirrored")
    filterWithDeps: bool | Literal["minimal"] = Field(
        False, description="Also take what filtered packages depend on: true follows aptly's rule (every "
                           "alternative of an OR-group nothing satisfies), minimal takes one alternative")
    withSources: bool = Field(False, description="Also mirror source packages (Sources indexes, .dsc and "
                                                 "their files)")
    withUdebs: bool = Field(False, description="Also mirror installer packages (debian-installer/binary-ARCH)")
    keyrings: list[str] = Field(default_factory=list, description="OpenPGP public keys (armored or binary) "
                                                                  "the Release must be signed by; relative to "
                                                                  "the spec file")
    verifySignature: bool = Field(True, description="false mirrors an unsigned upstream without checking "
                                                    "anything (a warning on every update); keyrings is then "
                                                    "not needed")
    maxRemovalPercent: float = Field(20, ge=0, le=100, description="Refuse an update that removes more than "
                                                                   "this share of the packages (--force "
                                                                   "accepts it)")
    downloadConcurrency: int = Field(4, ge=1, le=64, description="Package files downloaded at once")
    checkValidUntil: bool = Field(True, description="Refuse an upstream Release past its Valid-Until, as apt does")
    network: Network = Field(default_factory=Network, description="Timeouts and retries of upstream requests")
    limits: Limits = Field(default_factory=Limits, description="Size bounds on what the upstream may send")

    def stored(self) -> dict:
        """This spec as state keeps it and plans compare it: its JSON form with each
        secret (every `network.headers` value, the `network.proxy` user:password)
        replaced by its digest (`secret_digest`)."""
        out = self.model_dump(mode="json")
        network = out.get("network") or {}
        if network.get("headers"):
            network["headers"] = {name: secret_digest(value) for name, value in network["headers"].items()}
        if network.get("proxy"):
            network["proxy"] = redact_url(network["proxy"])
        return out

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "file:")):
            raise ValueError("must start with http://, https:// or file:")
        return value

    @field_validator("components", "architectures")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must not be empty (leave it out to take all from the Release file)")
        return value

    @model_validator(mode="after")
    def _trust(self) -> MirrorSpec:
        if self.verifySignature and not self.keyrings:
            raise ValueError("keyrings: required unless verifySignature: false is written out")
        return self


class Series(Strict):
    every: str = Field(description="How often a new snapshot is taken: 1d, 12h, 1w")
    keep: int = Field(ge=1, description="How many of the series to keep")

    @field_validator("every")
    @classmethod
    def _every(cls, value: str) -> str:
        parse_duration(value)
        return value


class SnapshotSpec(Strict):
    mirror: Name | None = Field(None, description="Take the mirror's current list (one of mirror, snapshots)")
    snapshots: list[Name] | None = Field(
        None, description="Merge these snapshots; a later one replaces what earlier ones hold for the same "
                          "package name and architecture (one of mirror, snapshots)")
    filter: str | None = Field(None, description="aptly package query: keep only the matching packages")
    filterWithDeps: bool | Literal["minimal"] = Field(
        False, description="Also take what filtered packages depend on: true follows aptly's rule (every "
                           "alternative of an OR-group nothing satisfies), minimal takes one alternative")
    latest: bool = Field(False, description="On merge keep the highest version instead of the later source")
    series: Series | None = Field(
        None, description="Take a new snapshot NAME-YYYYMMDD (NAME-YYYYMMDDHHMM when more often than daily) "
                          "every `every`, keep the newest `keep`; publish it as NAME@latest. Needs mirror")

    @model_validator(mode="after")
    def _one_source(self) -> SnapshotSpec:
        if (self.mirror is None) == (self.snapshots is None):
            raise ValueError("exactly one of mirror, snapshots is required")
        if self.snapshots is not None and not self.snapshots:
            raise ValueError("snapshots: must name at least one snapshot")
        if self.series is not None and self.mirror is None:
            raise ValueError("series: needs a mirror source")
        return self


class Signing(Strict):
    """How Release is signed (InRelease and Release.gpg): exactly one of keyFile, key, skip."""

    keyFile: str | None = Field(None, description="Armored secret key file (e.g. a mounted Secret), imported "
                                                  "into ROOT/gnupg; relative to the spec file")
    key: str | None = Field(None, description="Key id or fingerprint of a secret key in the default gpg home")
    skip: bool = Field(False, description="Publish unsigned (clients need [trusted=yes])")
    passphraseFile: str | None = Field(None, description="File holding the key's passphrase; relative to the "
                                                         "spec file")

    @model_validator(mode="after")
    def _one_way(self) -> Signing:
        chosen = [self.keyFile is not None, self.key is not None, self.skip]
        if sum(chosen) != 1:
            raise ValueError("exactly one of keyFile, key, skip: true is required")
        return self


# Compression is most of what a publish costs. On Debian bookworm's
# main/binary-amd64/Packages (50 MB, 63,000 stanzas), on 2 CPUs:
#
#     gzip -3  0.65 s  13.4 MB        xz -0   3.0 s  11.9 MB
#     gzip -6  1.20 s  11.8 MB        xz -1   5.8 s  11.1 MB
#                                     xz -2  10.5 s  10.8 MB   (Debian ships -9: 8.8 MB)
#
# apt fetches the .xz form when the Release lists one, so that is what clients
# download; .gz serves older tools. The defaults keep a publish fast and .xz the
# smaller form; raise a level where download size matters more than publish time.
class Compression(Strict):
    """Levels of the compressed index forms (Packages.gz, Packages.xz); null leaves a form
    out. The plain form is always written."""

    gz: int | None = Field(3, ge=1, le=9, description="gzip level of Packages.gz (null: no .gz form)")
    xz: int | None = Field(0, ge=0, le=9, description="xz preset of Packages.xz (null: no .xz form)")

    def levels(self) -> dict[str, int]:
        """{".gz": level, ".xz": level} for the forms to write."""
        return {f".{form}": level for form, level in (("gz", self.gz), ("xz", self.xz)) if level is not None}


class PublishSpec(Strict):
    prefix: str = Field(".", description="Directory under the publish root ('.' is the root itself); the "
                                         "tree is PREFIX/dists/DISTRIBUTION and PREFIX/pool")
    distribution: str = Field(description="dists/ directory name (the codename clients put in sources.list)")
    components: dict[str, str] = Field(
        description="component -> snapshot name, or SERIES@latest for the newest member of a snapshot series")
    architectures: list[str] | None = Field(None, description="Default: every architecture the snapshots "
                                                              "hold")
    origin: str | None = Field(None, description="Release Origin field")
    label: str | None = Field(None, description="Release Label field")
    suite: str | None = Field(None, description="Release Suite field (default: the distribution)")
    codename: str | None = Field(None, description="Release Codename field (default: the distribution)")
    description: str | None = Field(None, description="Release Description field")
    validFor: str | None = Field(None, description="Valid-Until = Date + this duration, e.g. 7d")
    renewBefore: str | None = Field(None, description="Re-sign when less than this is left before Valid-Until "
                                                      "(default: half of validFor)")
    signing: Signing = Field(description="How Release is signed")
    acquireByHash: bool = Field(True, description="Also write indexes under by-hash/SHA256/ and say so in "
                                                  "Release (clients never see a half-switched tree)")
    compression: Compression = Field(default_factory=Compression, description="Compressed index forms")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/") or "."
        parts = value.split("/")
        if value != "." and any(p in ("", ".", "..") or p in ("dists", "pool") for p in parts):
            raise ValueError("must be '.' or a relative path without '.', '..', 'dists' or 'pool' parts")
        return value

    @field_validator("distribution")
    @classmethod
    def _dist(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", value) or ".." in value:
            raise ValueError("must be a plain distribution name")
        return value

    @field_validator("components")
    @classmethod
    def _components(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("must map at least one component to a snapshot")
        for comp, ref in value.items():
            if not re.match(r"^[a-z0-9][a-z0-9._/-]*$", comp):
                raise ValueError(f"bad component name {comp!r}")
            name = ref.removesuffix("@latest")
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"{comp}: bad snapshot reference {ref!r}")
        return value

    @field_validator("validFor", "renewBefore")
    @classmethod
    def _valid_for(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _renewal(self) -> PublishSpec:
        if self.renewBefore is not None:
            if self.validFor is None:
                raise ValueError("renewBefore: needs validFor")
            if parse_duration(self.renewBefore) >= parse_duration(self.validFor):
                raise ValueError("renewBefore: must be shorter than validFor")
        return self

    @property
    def key(self) -> str:
        return f"{self.prefix}/{self.distribution}"


class _Doc(Strict):
    apiVersion: Literal["reconciler/v1"]
    metadata: Metadata


class MirrorDoc(_Doc):
    kind: Literal["Mirror"]
    spec: MirrorSpec


class SnapshotDoc(_Doc):
    kind: Literal["Snapshot"]
    spec: SnapshotSpec


class PublishDoc(_Doc):
    kind: Literal["Publish"]
    spec: PublishSpec


Document = Annotated[Union[MirrorDoc, SnapshotDoc, PublishDoc], Field(discriminator="kind")]
DOCUMENT = TypeAdapter(Document)
KINDS = {"Mirror": MirrorDoc, "Snapshot": SnapshotDoc, "Publish": PublishDoc}


def json_schema() -> dict:
    """JSON Schema of one spec document, for editors (yaml-language-server)."""
    schema = DOCUMENT.json_schema()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "reconciler spec document"
    return schema
