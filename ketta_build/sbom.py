"""The CycloneDX SBOM a Ketta wheel carries in ``.dist-info/sboms/`` (PEP 770).

One document per wheel, made with ``cyclonedx-python-lib`` (CycloneDX 1.6 JSON):

* the component described is ``NAME X+LABEL.N``; its **pedigree** says what it is made of: the
  ancestor is upstream ``NAME X`` (with the sdist's sha256), the **patches** are every patch the
  build applied, in the order it applied them (the whole patch file as the diff's text, the file's
  path in the series' repository as the diff's url, the type from ``Upstream-Status``, and as what
  it resolves only the URLs its header gives as such: ``Bug``, ``Bug-<Vendor>``, ``Forwarded``);
  the notes repeat the order with each patch's outcome;
* the component's properties say what is inside and where it came from: the git tree of the
  sources built (``ketta:git-tree``), the series' commit and whether ``patches/`` had uncommitted
  changes (``ketta:series-commit``, ``ketta:series-dirty``), each patch's sha256
  (``ketta:patch-sha256:NAME``);
* the **components** are the release's locked dependencies, one per pin of the constraints file
  ``uv export`` writes from the release's ``uv.lock``, with purls; the dependency graph comes from
  that file's ``# via`` lines.

Nothing in it depends on when or where it is made: the timestamp is the build tree's commit date
(the wheel's ``SOURCE_DATE_EPOCH``), every bom-ref is a purl or a fixed name, and the serial number
is derived from the rest of the document, so two builds of one tree give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import __version__
from .errors import KettaError
from .patchfile import PatchHeader

SBOM_FILE = "ketta.cdx.json"  # the file name under .dist-info/sboms/
PROPERTY_PREFIX = "ketta:"
# The serial number is a name-based UUID of the document's other content, in this namespace.
_SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ketta-build:sbom")
_URL = re.compile(r"^https?://\S+$")


@dataclass(frozen=True)
class Pin:
    """One pinned package of a constraints file: ``name==version ; marker`` and its ``# via`` names."""

    name: str  # canonical (PEP 503)
    version: str
    marker: str | None
    via: tuple[str, ...]  # canonical names of what needs it (the project itself among them)


def read_constraints(text: str) -> list[Pin]:
    """The pins of a constraints file ``uv export`` wrote, with the ``# via`` annotations under each."""
    pins: list[Pin] = []
    current: dict | None = None

    def close() -> None:
        if current is not None:
            pins.append(Pin(current["name"], current["version"], current["marker"], tuple(current["via"])))

    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if current is None or not line.startswith(" "):
                continue  # the file's own comment lines
            note = stripped.lstrip("#").strip()
            if note.startswith("via"):
                note = note[3:].strip()
            if note and not note.startswith("-"):  # "-r requirements.in" style sources are not packages
                current["via"].append(canonicalize_name(note.split()[0]))
            continue
        if stripped.startswith("-"):  # options such as -e or --index-url: no pin
            continue
        close()
        try:
            req = Requirement(stripped)
        except InvalidRequirement as exc:
            raise KettaError(f"not a pin: {stripped[:60]!r} ({exc})", line=number) from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "==="):
            raise KettaError(f"{req.name} is not pinned to one version (==)", line=number)
        current = {"name": canonicalize_name(req.name), "version": specs[0].version,
                   "marker": str(req.marker) if req.marker else None, "via": []}
    close()
    return pins


def patch_type(upstream_status: str):
    """CycloneDX's patch type for a DEP-3 ``Upstream-Status``: ``Backport`` and ``Accepted`` (taken
    from upstream's later work) are backports; everything else is Ketta's own, unofficial."""
    from cyclonedx.model.component import PatchClassification

    word = upstream_status.split()[0] if upstream_status.split() else ""
    return PatchClassification.BACKPORT if word in ("Backport", "Accepted") else PatchClassification.UNOFFICIAL


def issue_type(upstream_status: str):
    """What a patch resolves: a design change Ketta makes on purpose (``Inappropriate`` upstream) is an
    enhancement; a fix meant for upstream or taken from it is a defect's."""
    from cyclonedx.model.issue import IssueClassification

    word = upstream_status.split()[0] if upstream_status.split() else ""
    return IssueClassification.ENHANCEMENT if word == "Inappropriate" else IssueClassification.DEFECT


@dataclass(frozen=True)
class AppliedPatch:
    """A patch as the build applied it: the patch file's bytes, its parsed header and its outcome;
    ``path`` is the file's path in the repository holding the series (``patches/NAME``), or its name
    when the series is in none."""

    name: str
    raw: bytes
    header: PatchHeader
    outcome: str
    path: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def location(self) -> str:
        return self.path or self.name


def resolved_urls(header: PatchHeader) -> list[tuple[str, str]]:
    """What a patch's DEP-3 header says it resolves: (field, URL) for ``Bug``, each ``Bug-<Vendor>``
    and a ``Forwarded`` that is a URL, in header order. ``Forwarded: no`` or ``not-needed`` and
    anything that is not a URL resolve nothing."""
    found = []
    for name, value in header.extra:
        if name == "Bug" or name.startswith("Bug-") or name == "Forwarded":
            url = value.strip().split("\n")[0].strip()
            if _URL.match(url):
                found.append((name, url))
    return found


def _purl(name: str, version: str):
    from packageurl import PackageURL

    return PackageURL(type="pypi", name=name, version=version)


def _bom(provenance: dict, patches: list[AppliedPatch], pins: list[Pin], epoch: int, serial: uuid.UUID):
    try:
        from cyclonedx.contrib.this.builders import this_component
    except ImportError:  # cyclonedx-python-lib before its contrib package
        from cyclonedx.builder.this import this_component
    from cyclonedx.model import AttachedText, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType, Diff, Patch, Pedigree
    from cyclonedx.model.contact import OrganizationalEntity
    from cyclonedx.model.dependency import Dependency
    from cyclonedx.model.issue import IssueType, IssueTypeSource
    from cyclonedx.model.lifecycle import LifecyclePhase, PredefinedLifecycle
    from cyclonedx.model.tool import ToolRepository

    upstream = provenance.get("upstream") or {}
    project, release, version = provenance["project"], provenance["release"], provenance["version"]
    ancestor_purl = _purl(project, release)
    ancestor = Component(
        type=ComponentType.APPLICATION, name=project, version=release, purl=ancestor_purl,
        bom_ref=f"upstream:{ancestor_purl.to_string()}",
        supplier=OrganizationalEntity(name=provenance.get("upstream_supplier") or project),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=upstream["sha256"])] if upstream.get("sha256") else None,
        properties=[Property(name=f"{PROPERTY_PREFIX}upstream-file", value=upstream["filename"])]
        if upstream.get("filename") else None,
    )
    cdx_patches = []
    applied = [p for p in patches if p.outcome != "already-upstream"]
    for p in applied:
        h = p.header
        resolves = [IssueType(type=issue_type(h.upstream_status), source=IssueTypeSource(name=field), references=[XsUri(url)])
                    for field, url in resolved_urls(h)]
        text = AttachedText(content=p.raw.decode("utf-8"), content_type="text/x-diff")
        cdx_patches.append(Patch(type=patch_type(h.upstream_status), diff=Diff(text=text, url=XsUri(p.location)),
                                 resolves=resolves))
    order = ", ".join(f"{p.name} ({p.outcome})" for p in applied) or "none"
    notes = (f"{project} {version} is upstream {project} {release}"
             f"{' (' + upstream['filename'] + ')' if upstream.get('filename') else ''} with the series' patches applied "
             f"in this order: {order}.")
    skipped = [p.name for p in patches if p.outcome == "already-upstream"]
    if skipped:
        notes += f" Already upstream, so not applied: {', '.join(skipped)}."
    properties = [Property(name=f"{PROPERTY_PREFIX}build-number", value=str(provenance["build_number"]))]
    if provenance.get("tree"):
        properties.append(Property(name=f"{PROPERTY_PREFIX}git-tree", value=provenance["tree"]))
    series = provenance.get("series")
    if series is not None:
        if series.get("commit"):
            properties.append(Property(name=f"{PROPERTY_PREFIX}series-commit", value=series["commit"]))
        properties.append(Property(name=f"{PROPERTY_PREFIX}series-dirty", value=json.dumps(bool(series.get("dirty")))))
    properties += [Property(name=f"{PROPERTY_PREFIX}patch-sha256:{p.name}", value=p.sha256) for p in applied]
    root_purl = _purl(project, version)
    root = Component(
        type=ComponentType.APPLICATION, name=project, version=version, purl=root_purl, bom_ref=root_purl.to_string(),
        supplier=OrganizationalEntity(name=provenance.get("supplier", "ketta").capitalize()),
        pedigree=Pedigree(ancestors=[ancestor], patches=cdx_patches, notes=notes), properties=properties,
    )
    tool = Component(type=ComponentType.APPLICATION, name="ketta-build", version=__version__,
                     bom_ref=f"tool:ketta-build@{__version__}")
    library = this_component()
    library.bom_ref.value = f"tool:{library.name}@{library.version}"

    components: dict[str, Component] = {}
    by_name: dict[str, list[Component]] = {}
    for pin in pins:
        purl = _purl(pin.name, pin.version)
        ref = purl.to_string()
        if ref in components:  # one version pinned twice under different markers
            continue
        component = Component(type=ComponentType.LIBRARY, name=pin.name, version=pin.version, purl=purl, bom_ref=ref,
                              properties=[Property(name=f"{PROPERTY_PREFIX}marker", value=pin.marker)]
                              if pin.marker else None)
        components[ref] = component
        by_name.setdefault(pin.name, []).append(component)
    needs: dict[str, set[str]] = {}
    for pin in pins:
        ref = _purl(pin.name, pin.version).to_string()
        for name in pin.via:
            for dependent in [root] if name == project else by_name.get(name, []):
                needs.setdefault(dependent.bom_ref.value, set()).add(ref)
    # Every component is in the graph, those that need nothing with an empty list (CycloneDX: known to
    # have no dependencies); made directly, the library's register_dependency is quadratic.
    graph = [Dependency(ref=c.bom_ref, dependencies=[Dependency(ref=components[r].bom_ref) for r in needs.get(ref, ())])
             for ref, c in [*components.items(), (root.bom_ref.value, root)]]
    bom = Bom(
        serial_number=serial,
        metadata=BomMetaData(timestamp=datetime.fromtimestamp(epoch, timezone.utc), component=root,
                             tools=ToolRepository(components=[tool, library]),
                             lifecycles=[PredefinedLifecycle(LifecyclePhase.BUILD)]),
        components=components.values(),
        dependencies=graph,
    )
    return bom


def sbom_json(provenance: dict, patches: list[AppliedPatch], constraints: str, epoch: int) -> str:
    """The SBOM document of a Ketta wheel, as CycloneDX 1.6 JSON text.

    ``provenance`` is the wheel's ``ketta_provenance.json`` data, ``patches`` the applied patch files
    in series order, ``constraints`` the release's constraints file, ``epoch`` the build's
    ``SOURCE_DATE_EPOCH``. The serial number is a UUID (version 5) of the document written with a nil
    serial number, so the same inputs give the same bytes and other inputs another serial number.
    """
    import warnings

    from cyclonedx.output.json import JsonV1Dot6

    pins = read_constraints(constraints)
    order = [p.location for p in patches]

    def render(serial: uuid.UUID) -> str:
        with warnings.catch_warnings():
            # the library warns about a root without dependencies: a synthetic tree may have none
            warnings.simplefilter("ignore", UserWarning)
            text = JsonV1Dot6(_bom(provenance, patches, pins, epoch, serial)).output_as_string(indent=2)
        # The library keeps a pedigree's patches sorted by their content; a patch series is an order.
        data = json.loads(text)
        pedigree = data["metadata"]["component"].get("pedigree", {})
        if "patches" in pedigree:
            pedigree["patches"].sort(key=lambda p: order.index(p["diff"]["url"]))
        return json.dumps(data, indent=2) + "\n"

    draft = render(uuid.UUID(int=0))
    return render(uuid.uuid5(_SERIAL_NAMESPACE, hashlib.sha256(draft.encode()).hexdigest()))


def validate(text: str) -> None:
    """Raise KettaError unless ``text`` is a valid CycloneDX 1.6 JSON document (the library's strict
    validator; needs ``cyclonedx-python-lib[json-validation]``)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise KettaError(f"the SBOM is not valid CycloneDX 1.6: {error}")
