"""The dataset registry: a name -> processed train/valid/test splits, cached on disk.

A name is one of (checked in this order):
- ``synthetic`` or ``synthetic:SIZE`` (tiny, small, medium, diginetica; param ``seed``): generated in
  memory each time (deterministic, seconds at most), never cached;
- a dataset imported with ``datasets prepare NAME --from PATH``: ``<data_dir>/NAME/import.json`` records
  the path and options; used unless ``raw``/``protocol`` ask for the raw route;
- a source (diginetica, gowalla, lastfm, yoochoose): the raw file (``raw``, else the source's raw folder,
  fetched if missing) through a protocol (default: the source's);
- a path: a preprocessed folder/file (see loaders.py) or a click-log CSV (params ``session_col``,
  ``item_col``, ``time_col``, ``delimiter``; protocol default ``lessr``).

Processed splits live in ``<data_dir>/<name>/processed/<key>.npz``. The key hashes everything that
decides the result: the full sha256 of each input file, the protocol and all its parameters, the reader
options, ``valid_fraction`` and ``DATA_FORMAT_VERSION``. Hashing a multi-GB raw file takes seconds, so
digests are remembered in ``<data_dir>/.file_digests.json`` keyed by path + size + mtime (a file that
changes gets re-hashed). Cache files are written atomically; one that cannot be read is rebuilt with a
warning.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataFormatError, UserError
from ..io import read_json, remove_orphans, write_json
from .sessions import SessionDataset, Split, make_dataset

# Bump when a loader, a protocol or the .npz layout changes what a cached file holds.
DATA_FORMAT_VERSION = 1
CLICKLOG_OPTIONS = ("session_col", "item_col", "time_col", "delimiter")
DIGEST_FILE = ".file_digests.json"
IMPORT_FILE = "import.json"


@dataclass
class Prepared:
    dataset: SessionDataset
    cache_path: Path | None  # None for synthetic data
    from_cache: bool


def load_dataset(name="synthetic", data_dir="datasets", protocol=None, valid_fraction=0.1, raw=None,
                 refresh=False, **params) -> SessionDataset:
    """The processed dataset `name` (see the module doc); `refresh` rebuilds its cache file."""
    return prepare_dataset(name, data_dir, protocol, valid_fraction, raw, refresh, **params).dataset


def prepare_dataset(name="synthetic", data_dir="datasets", protocol=None, valid_fraction=0.1, raw=None,
                    refresh=False, source_path=None, **params) -> Prepared:
    """`load_dataset` that also says where the cache file is and whether it was hit. `source_path`
    imports a preprocessed folder or click log under `name` (recorded for later loads by name)."""
    name, data_dir = str(name), Path(data_dir)
    if not 0.0 <= float(valid_fraction) < 1.0:
        raise UserError(f"valid fraction must be in [0, 1), got {valid_fraction}")
    if source_path is not None:
        _check_name(name)
        record = _import_record(source_path, protocol, params)
        prepared = _from_path(name, data_dir, record, valid_fraction, refresh)
        write_json(data_dir / name / IMPORT_FILE, record)  # only after the import worked
        return prepared
    if name == "synthetic" or name.startswith("synthetic:"):
        return _synthetic(name, valid_fraction, protocol, raw, params)
    # Only a single safe folder name is looked up under data_dir ('../x' must not reach outside it).
    imported = data_dir / name / IMPORT_FILE if _is_safe_name(name) else None
    is_source = name.lower() in source_names()
    if imported is not None and imported.exists() and not (is_source and (raw is not None or protocol is not None)):
        record = read_import_record(imported)
        if raw is not None:
            raise ConfigError("raw", f"'{name}' is imported from {record.get('path')}; raw files apply to sources only")
        if (params or protocol) and record.get("layout") != "clicklog":
            raise UserError(f"'{name}' is an imported preprocessed split; it takes no protocol or parameters "
                            f"({', '.join(sorted(params)) or protocol})")
        record["protocol"] = protocol or record.get("protocol")
        record["protocol_params"] = {**record.get("protocol_params", {}), **params}
        return _from_path(name, data_dir, record, valid_fraction, refresh)
    if is_source:
        return _from_source(name.lower(), data_dir, protocol, valid_fraction, raw, refresh, params)
    if raw is not None:
        raise ConfigError("raw", f"raw files apply to the sources ({', '.join(source_names())}), not to '{name}'")
    if Path(name).exists():
        path = Path(name).resolve()
        record = _import_record(path, protocol, params)
        return _from_path(_name_for_path(path), data_dir, record, valid_fraction, refresh)
    raise UserError(f"unknown dataset '{name}': not synthetic[:tiny|small|medium|diginetica], a source "
                    f"({', '.join(source_names())}), a dataset imported into {data_dir}/ "
                    f"({', '.join(_imported_names(data_dir)) or 'none yet'}), nor an existing path")


# ----------------------------------------------------------------------------------------------------
# The four routes


def _synthetic(name, valid_fraction, protocol, raw, params) -> Prepared:
    from .synthetic import synthetic_dataset

    if protocol is not None or raw is not None:
        raise ConfigError("dataset.protocol", "synthetic data takes no protocol and no raw files")
    unknown = set(params) - {"seed"}
    if unknown:
        raise UserError(f"synthetic data takes only the parameter 'seed', not {', '.join(sorted(unknown))}")
    size = name.split(":", 1)[1] if ":" in name else "small"
    ds = synthetic_dataset(size, seed=int(params.get("seed", 0)), valid_fraction=valid_fraction)
    return Prepared(ds, None, False)


def _from_source(name, data_dir, protocol, valid_fraction, raw, refresh, params) -> Prepared:
    source = _sources().get_source(name)
    if raw is not None:
        raw_path = Path(raw)
        if not raw_path.is_file():
            raise UserError(f"raw file {raw_path} does not exist")
    else:
        raw_path = source.raw_path(data_dir)
        if not raw_path.exists():
            raw_path = Path(source.fetch(data_dir))  # downloads, or UserError saying where to put it
    protocols = _protocols()
    protocol = protocol or source.default_protocol
    _check_protocol(protocols, protocol)
    full_params = {**protocols.default_params(protocol, name), **params}
    raw_sha = file_sha256(raw_path, data_dir)
    key = cache_key({"route": "source", "source": name, "raw_sha256": raw_sha, "protocol": protocol,
                     "params": full_params, "valid_fraction": valid_fraction})
    meta = {"source": name, "protocol": protocol, "params": full_params, "raw_file": str(raw_path),
            "raw_sha256": raw_sha, "cache_key": key}

    def build():
        clicks = source.read(raw_path)
        result = protocols.PROTOCOLS[protocol](clicks, dataset=name, **full_params)
        _check_not_empty(raw_path, clicks, result, protocol)
        return make_dataset(name, result.n_items, result.train, result.test, valid_fraction,
                            meta={**meta, "protocol_info": getattr(result, "info", {})})

    return _cached(data_dir / name / "processed" / f"{key}.npz", key, build, refresh)


def _import_record(path, protocol, params) -> dict:
    """What a later load by name needs to redo an import: the path, its layout and the options."""
    from .loaders import detect_layout

    path = Path(path).resolve()
    options = {k: params.pop(k) for k in list(params) if k in CLICKLOG_OPTIONS or k == "id_base"}
    # Column names make any delimited file a click log (even a session-rec TSV read on its own).
    as_clicklog = path.is_file() and any(k in options for k in ("session_col", "item_col", "time_col"))
    layout = "clicklog" if as_clicklog else detect_layout(path)
    if layout != "clicklog":
        if protocol is not None or params:
            raise UserError(f"{path} is already preprocessed ({layout} layout); it takes no protocol or "
                            f"protocol parameters ({', '.join(sorted(params)) or protocol})")
        bad = set(options) - {"id_base"}
        if bad or (options and layout != "lessr"):
            raise UserError(f"{path} ({layout} layout) takes none of the options {', '.join(sorted(options))}")
        return {"path": str(path), "layout": layout, "options": options}
    options.setdefault("delimiter", ",")
    return {"path": str(path), "layout": layout, "options": options, "protocol": protocol or "lessr",
            "protocol_params": dict(params)}


def _from_path(name, data_dir, record, valid_fraction, refresh) -> Prepared:
    from . import loaders

    path = Path(record["path"])
    cache_dir = data_dir / name / "processed"
    if not path.exists():
        # The imported folder is gone: the processed copy is self-contained, so use it if there is one.
        last = record.get("cache_files", {}).get(str(valid_fraction))
        if last and (cache_dir / last).exists():
            return Prepared(SessionDataset.load(cache_dir / last), cache_dir / last, True)
        raise UserError(f"{path} (imported as '{name}') no longer exists; import it again with "
                        f"`sbr-bench datasets prepare {name} --from PATH`")
    layout, files = ("clicklog", [path]) if record["layout"] == "clicklog" else loaders.input_files(path)
    digests = {f.name: file_sha256(f, data_dir) for f in files}
    payload = {"route": "path", "layout": layout, "files": digests, "options": record.get("options", {}),
               "valid_fraction": valid_fraction}
    if layout == "clicklog":
        protocols = _protocols()
        _check_protocol(protocols, record["protocol"])
        payload.update(protocol=record["protocol"], params=_clicklog_params(protocols, record))
    key = cache_key(payload)
    meta = {"source": str(path), "layout": layout, "files": digests, "cache_key": key,
            "options": record.get("options", {})}
    if layout == "clicklog":
        meta.update(protocol=payload["protocol"], params=payload["params"])
        meta["raw_sha256"] = digests[path.name]

    def build():
        if layout == "clicklog":
            opts = record["options"]
            clicks = loaders.read_click_log(path, opts.get("session_col"), opts.get("item_col"),
                                            opts.get("time_col"), opts.get("delimiter", ","))
            result = run_clicklog_protocol(protocols, payload["protocol"], clicks, payload["params"])
            _check_not_empty(path, clicks, result, payload["protocol"])
            return make_dataset(name, result.n_items, result.train, result.test, valid_fraction,
                                meta={**meta, "protocol_info": getattr(result, "info", {})})
        loaded = loaders.load_preprocessed(path, **record.get("options", {}))
        return assemble(name, loaded, valid_fraction, meta)

    prepared = _cached(cache_dir / f"{key}.npz", key, build, refresh)
    record.setdefault("cache_files", {})[str(valid_fraction)] = prepared.cache_path.name
    return prepared


# A click log already names its sessions, so the protocols run their session-id branches on it:
# - lessr: the Gowalla/Last.fm branch with the session column as "user", no time-gap splitting and no
#   top-N item cut: remove immediate repeats, keep the first 20 clicks, iterate {sessions >= 2, items >= 5},
#   test = the latest 20% of sessions by end time;
# - srgnn: the YOOCHOOSE branch (clicks in time order, since the log is sorted by time first): sessions
#   >= 2, items >= 5 (one pass), test = sessions of the last `test_days` (1) day(s).
CLICKLOG_BRANCH = {"lessr": "gowalla", "srgnn": "yoochoose"}
CLICKLOG_OVERRIDES = {"lessr": {"session_gap_s": float("inf"), "top_n_items": None}, "srgnn": {}}


def _check_not_empty(path, clicks, result, protocol) -> None:
    """A protocol that filters every session away must be an error, not a dataset of 0 clicks."""
    if len(result.train) == 0 or len(result.test) == 0:
        part = "training" if len(result.train) == 0 else "test"
        raise DataFormatError(path, f"{len(clicks)} clicks read, but no {part} session is left after the "
                              f"{protocol} protocol's filters (sessions of >= 2 clicks, items seen >= 5 times)")


def _clicklog_params(protocols, record) -> dict:
    protocol = record["protocol"]
    defaults = {**protocols.default_params(protocol, CLICKLOG_BRANCH[protocol]), **CLICKLOG_OVERRIDES[protocol]}
    return {**defaults, **record.get("protocol_params", {})}


def run_clicklog_protocol(protocols, protocol, clicks, params):
    clicks = clicks.sort_values("time", kind="stable").reset_index(drop=True)
    if protocol == "lessr":
        clicks = clicks.rename(columns={"session": "user"})
    return protocols.PROTOCOLS[protocol](clicks, dataset=CLICKLOG_BRANCH[protocol], **params)


def assemble(name, loaded, valid_fraction, meta) -> SessionDataset:
    """A SessionDataset from a reader's output. A shipped validation split replaces the carved one."""
    meta = {**meta, "layout_info": loaded.info}
    if loaded.valid is None:
        return make_dataset(name, loaded.n_items, loaded.train, loaded.test, valid_fraction, meta)
    test = loaded.test if isinstance(loaded.test, Split) else Split.all_prefixes(loaded.test)
    meta.update(valid_fraction=None, valid_from="the validation file shipped with the data")
    return SessionDataset(name, int(loaded.n_items), Split.all_prefixes(loaded.train),
                          Split.all_prefixes(loaded.valid), test, meta)


# ----------------------------------------------------------------------------------------------------
# Cache


def cache_key(payload: dict) -> str:
    """A short hash of everything that decides a processed dataset."""
    blob = json.dumps({"version": DATA_FORMAT_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cached(path: Path, key: str, build, refresh: bool) -> Prepared:
    remove_orphans(path.parent)  # temporary files of a process killed while writing a cache
    if path.exists() and not refresh:
        try:
            ds = SessionDataset.load(path)
            if ds.meta.get("cache_key") == key:
                return Prepared(ds, path, True)
            warnings.warn(f"cache file {path} belongs to another key; rebuilding it", stacklevel=3)
        except Exception as e:  # truncated or otherwise damaged file: rebuild it
            warnings.warn(f"cache file {path} is unreadable ({type(e).__name__}: {e}); rebuilding it",
                          stacklevel=3)
    ds = build()
    ds.meta["cache_key"] = key
    ds.save(path)
    return Prepared(ds, path, False)


def file_sha256(path, data_dir) -> str:
    """Full sha256 of a file, remembered by (resolved path, size, mtime) in `<data_dir>/.file_digests.json`."""
    from .download import sha256_file

    from .readers import regular_file

    path = regular_file(Path(path).resolve())  # a folder or FIFO is refused before hashing opens it
    st = path.stat()
    store = Path(data_dir) / DIGEST_FILE
    try:
        known = read_json(store) if store.exists() else {}
    except (ValueError, OSError):
        known = {}  # a damaged digest memo only costs a re-hash
    entry = known.get(str(path))
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["sha256"]
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise DataFormatError(path, f"cannot read the file ({e.strerror or e})") from None
    known[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        write_json(store, known)
    except OSError:
        pass  # a read-only data dir still works, just without the memo
    return digest


# ----------------------------------------------------------------------------------------------------
# Registry listing and helpers


def source_names() -> tuple:
    return tuple(sorted(_sources().SOURCES))


def list_datasets(data_dir="datasets") -> list[dict]:
    """Every dataset a name can select: built-in synthetic sizes, sources, imports, with cache state."""
    from .synthetic import SIZES

    data_dir = Path(data_dir)
    rows = [{"name": "synthetic" if size == "small" else f"synthetic:{size}", "kind": "synthetic",
             "status": "built in", "detail": f"{items} items, {sessions} sessions"}
            for size, (items, _, sessions, _) in SIZES.items()]
    sources = _sources()
    for name in source_names():
        src = sources.get_source(name)
        raw = src.raw_path(data_dir)
        rows.append({"name": name, "kind": "source",
                     "status": f"raw present, {_n_cached(data_dir / name)} cached" if raw.exists()
                     else f"raw missing, {_n_cached(data_dir / name)} cached",
                     "detail": f"{src.title}; protocol {src.default_protocol}; raw file {raw}"})
    for name in _imported_names(data_dir):
        try:
            rec = read_import_record(data_dir / name / IMPORT_FILE)
        except DataFormatError as e:  # listed as broken, the others still listed
            rows.append({"name": name, "kind": "imported (broken)", "status": "unusable", "detail": str(e)})
            continue
        rows.append({"name": name, "kind": f"imported ({rec.get('layout')})",
                     "status": f"{_n_cached(data_dir / name)} cached", "detail": rec.get("path", "")})
    return rows


def read_import_record(path: Path) -> dict:
    """`<data-dir>/NAME/import.json`, or a DataFormatError naming it (import the data again to fix it)."""
    import json

    try:
        record = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        record = e
    if not isinstance(record, dict) or not isinstance(record.get("path", ""), str):
        reason = f"{type(record).__name__}: {record}" if isinstance(record, Exception) else "not a JSON object"
        raise DataFormatError(path, f"not a readable import record ({reason}); import the data again with "
                              f"`sbr-bench datasets prepare {path.parent.name} --from PATH`")
    return record


def _n_cached(folder: Path) -> int:
    return len(list((folder / "processed").glob("*.npz")))


def _imported_names(data_dir: Path) -> list[str]:
    if not data_dir.is_dir():
        return []
    return sorted(p.parent.name for p in data_dir.glob(f"*/{IMPORT_FILE}"))


def _is_safe_name(name: str) -> bool:
    """One folder name under data_dir: no separators, not '.', '..' or hidden."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) is not None


def _check_name(name: str) -> None:
    if not _is_safe_name(name) or name.startswith("synthetic"):
        raise UserError(f"dataset name '{name}' must be letters, digits, '.', '_' or '-' (and not synthetic*)")


def _name_for_path(path: Path) -> str:
    """A cache folder name for a path given directly: '<parent>-<folder or file stem>'."""
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{path.parent.name}-{stem}").strip("_-") or "dataset"


def _check_protocol(protocols, protocol):
    if protocol not in protocols.PROTOCOLS:
        raise UserError(f"unknown protocol '{protocol}'; choose one of {', '.join(protocols.PROTOCOLS)}")


def _sources():
    return importlib.import_module("sbr_bench.data.sources")


def _protocols():
    return importlib.import_module("sbr_bench.data.protocols")
