"""Every change to a schema file keeps old data readable: each committed version of
schemas/*.avsc can read data written with every earlier version (Avro schema resolution)."""
from __future__ import annotations

import io
import json
import subprocess

import fastavro
import pytest
from fastavro.schema import parse_schema
from fastavro.utils import generate_many

from streams.codec import SchemaStore, _inline
from streams.settings import REPO_ROOT

SCHEMAS = REPO_ROOT / "schemas"


def readable_by(old: dict, new: dict, samples: int = 30) -> None:
    """Raise if data written with `old` cannot be read with `new`."""
    writer, reader = parse_schema(old), parse_schema(new)
    for record in generate_many(writer, samples):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, writer, record)
        buf.seek(0)
        fastavro.schemaless_reader(buf, writer, reader)


def contained(folder_files: dict[str, dict], name: str) -> dict:
    by_name = {f"{s.get('namespace')}.{s['name']}": s for s in folder_files.values()}
    raw = folder_files[name]
    return _inline(raw, by_name, set(), raw.get("namespace"))


def git_versions() -> list[dict[str, dict]]:
    """schemas/ as of every commit that touched it, oldest first, then the working tree."""
    try:
        shas = subprocess.run(["git", "log", "--format=%H", "--reverse", "--", "schemas"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        shas = []
    versions = []
    for sha in shas:
        listing = subprocess.run(["git", "ls-tree", "--name-only", sha, "schemas/"], cwd=REPO_ROOT,
                                 capture_output=True, text=True).stdout.split()
        files = {}
        for path in listing:
            if path.endswith(".avsc"):
                text = subprocess.run(["git", "show", f"{sha}:{path}"], cwd=REPO_ROOT, capture_output=True,
                                      text=True).stdout
                files[path.rsplit("/", 1)[-1][:-5]] = json.loads(text)
        versions.append(files)
    versions.append({p.stem: json.loads(p.read_text()) for p in SCHEMAS.glob("*.avsc")})
    return versions


def test_each_schema_version_reads_data_of_every_earlier_version():
    versions = git_versions()
    current = versions[-1]
    checked = 0
    for earlier in versions[:-1]:
        for name in earlier:
            assert name in current, f"schema {name} was removed; old records could no longer be read"
            readable_by(contained(earlier, name), contained(current, name))
            checked += 1
    SchemaStore(SCHEMAS)  # and the current set loads
    assert checked > 0 or len(versions) == 1


def test_the_check_refuses_a_new_field_without_default():
    # Given Interaction with a new required field
    old = json.loads((SCHEMAS / "Interaction.avsc").read_text())
    new = json.loads(json.dumps(old))
    new["fields"].append({"name": "device", "type": "string"})
    # Then old data is not readable and the check says so
    with pytest.raises(Exception):
        readable_by(old, new)
    # And with a default it is
    new["fields"][-1]["default"] = "unknown"
    readable_by(old, new)
