"""Where each real dataset comes from, and how its raw file gets into `<data_dir>/<name>/raw/`.

`SOURCES[name]` is a `Source`: public download URL(s), the archive and the raw member file the reader
expects, known checksums, homepage, licence note, the default preprocessing protocol and the name of
its reader in `sbr_bench.data.readers` (imported lazily, so this module works on its own).

Checksums. No dataset host publishes a SHA-256 for these archives, so every `sha256` below is None and
`fetch` uses trust-on-first-use: after the first successful download and extraction it records the
archive's (and the extracted file's) SHA-256 in `<data_dir>/<name>/raw/SHA256` (sha256sum format), and
every later download or hand-placed archive is verified against that record. This detects a corrupted
or changed re-download, NOT a file that was already wrong the first time. Where the publisher gives an
MD5 of the extracted file (Last.fm, in its own README), `fetch` also checks that MD5 after extraction.
Delete the SHA256 file to accept a new version of a dataset.
"""

from __future__ import annotations

import gzip
import importlib
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...errors import UserError
from ...io import atomic_path, write_text
from ..download import ChecksumError, DownloadError, download, md5_file, sha256_file

CHECKSUM_FILE = "SHA256"


@dataclass(frozen=True)
class Source:
    name: str
    title: str
    urls: tuple  # tried in order; the first that works wins
    archive: str  # file name the download is saved as, in the raw folder
    member: str  # raw file the reader expects (inside the archive, matched by base name)
    homepage: str
    licence: str
    default_protocol: str  # "lessr" or "srgnn" (sbr_bench.data.protocols)
    reader: str  # function name in sbr_bench.data.readers: path -> pandas.DataFrame
    sha256: str | None = None  # of the archive, when published
    size: int | None = None  # of the archive in bytes, when published
    member_md5: str | None = None  # of the extracted member, when published
    note: str = ""  # extra advice for downloading by hand

    # ---- paths ---------------------------------------------------------------------------------
    def raw_dir(self, data_dir) -> Path:
        return Path(data_dir) / self.name / "raw"

    def raw_path(self, data_dir) -> Path:
        return self.raw_dir(data_dir) / self.member

    def archive_path(self, data_dir) -> Path:
        return self.raw_dir(data_dir) / self.archive

    def checksum_path(self, data_dir) -> Path:
        return self.raw_dir(data_dir) / CHECKSUM_FILE

    @property
    def archive_kind(self) -> str:
        name = self.archive.lower()
        for kind in (".tar.gz", ".tgz", ".zip", ".7z", ".gz"):
            if name.endswith(kind):
                return kind
        return ""  # the download is the raw file itself

    # ---- fetching ------------------------------------------------------------------------------
    def fetch(self, data_dir, url=None, progress=True, retries=3, timeout=60, backoff=1.0) -> Path:
        """Make sure the raw file exists and return its path.

        If `raw_path` exists it is returned as is (not re-hashed: use `verify`). Otherwise the archive
        is downloaded (resumable; `url` replaces the registered URLs), unless it is already in the raw
        folder (put there by hand), verified, and the member extracted. A .7z archive cannot be opened
        with the standard library: it is downloaded, then a UserError says how to extract it by hand.
        """
        raw = self.raw_path(data_dir)
        if raw.exists():
            return raw
        archive = self.archive_path(data_dir)
        recorded = self.recorded_digests(data_dir)
        expected = self.sha256 or recorded.get(self.archive)
        fresh = not archive.exists()
        if fresh:
            self._download(data_dir, [url] if url else list(self.urls), expected, progress, retries, timeout,
                           backoff)
        else:
            self._check_archive(archive, expected)
        if self.archive_kind == ".7z":
            self._record(data_dir, [archive])
            raise UserError(
                f"{archive} is a 7-Zip archive, which Python's standard library cannot open: extract "
                f"'{self.member}' from it by hand into '{self.raw_dir(data_dir)}/' (for example "
                f"`7z e {archive} -o{self.raw_dir(data_dir)} {self.member}`) and run the command again")
        if self.archive_kind:
            try:
                self._extract(archive, raw, data_dir)
            except UserError:
                if fresh and self.sha256 is None and self.archive not in recorded:
                    archive.unlink(missing_ok=True)  # e.g. a web page in place of the file: never keep it
                raise
        self._check_member(raw, archive)
        self._record(data_dir, [archive, raw] if self.archive_kind else [raw])
        return raw

    def _download(self, data_dir, urls, expected, progress, retries, timeout, backoff):
        failures = []
        for u in urls:
            try:
                download(u, self.archive_path(data_dir), sha256=expected, size=self.size, timeout=timeout,
                         retries=retries, progress=progress, backoff=backoff, hint=self._member_hint(data_dir))
                return
            except DownloadError as e:  # network failure: try the next mirror
                failures.append(f"{u}: {e.reason}")
            except ChecksumError as e:
                if self.sha256 is None and expected is not None:
                    raise ChecksumError(f"{e} (the expected digest was recorded on the first download in "
                                        f"{self.checksum_path(data_dir)}; delete that file to trust the new one)"
                                        ) from None
                raise
        reason = "; ".join(failures)
        raise DownloadError(f"could not download {self.title} ({reason}). "
                            + self.manual_instructions(data_dir).replace("\n", " "), reason)

    def _check_archive(self, archive, expected):
        if expected is None:
            return
        got = sha256_file(archive)
        if got != expected.lower():
            origin = ("published checksum" if self.sha256 else
                      f"digest recorded on first download in {archive.parent / CHECKSUM_FILE}")
            raise UserError(f"checksum mismatch for {archive}: expected sha256 {expected} ({origin}), got {got}; "
                            "delete the file to download it again"
                            + ("" if self.sha256 else f", or delete {CHECKSUM_FILE} to trust this new file"))

    def _extract(self, archive, raw, data_dir):
        kind = self.archive_kind
        try:
            if kind == ".gz":
                with gzip.open(archive, "rb") as src, atomic_path(raw) as tmp, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            elif kind == ".zip":
                with zipfile.ZipFile(archive) as zf:
                    name = self._find_member(archive, zf.namelist())
                    with zf.open(name) as src, atomic_path(raw) as tmp, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            else:  # .tar.gz / .tgz
                with tarfile.open(archive, "r:*") as tf:
                    names = [m.name for m in tf.getmembers() if m.isfile()]
                    name = self._find_member(archive, names)
                    with tf.extractfile(name) as src, atomic_path(raw) as tmp, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as e:
            raise UserError(
                f"{archive} is not a readable {kind} archive ({type(e).__name__}: {e}); a host such as Google "
                f"Drive may have sent a web page instead of the file. Download the file by hand. "
                + self.manual_instructions(data_dir).replace("\n", " ")) from None

    def _find_member(self, archive, names):
        matches = [n for n in names if PurePosixPath(n).name == self.member]
        if not matches:
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise UserError(f"{archive} has no file named '{self.member}' (it holds: {shown or 'nothing'})")
        return min(matches, key=len)  # the least nested one, if several

    def _check_member(self, raw, archive):
        if self.member_md5 is None:
            return
        got = md5_file(raw)
        if got != self.member_md5:
            raw.unlink(missing_ok=True)
            raise UserError(f"checksum mismatch for {raw} (extracted, deleted): expected md5 {self.member_md5} "
                            f"(published by the dataset's authors), got {got}; {archive} is not the published archive: "
                            "delete it and download it again")

    # ---- trust-on-first-use record -------------------------------------------------------------
    def recorded_digests(self, data_dir) -> dict:
        """{file name: sha256} from `raw/SHA256`, empty if no download has completed yet."""
        path = self.checksum_path(data_dir)
        if not path.exists():
            return {}
        digests = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or len(parts[0]) != 64:
                raise UserError(f"{path}, line {n}: expected '<sha256>  <file name>'; fix or delete the file")
            digests[parts[1].lstrip("*").strip()] = parts[0].lower()
        return digests

    def _record(self, data_dir, paths):
        """Add the sha256 of `paths` to raw/SHA256; a digest already recorded is trusted, never replaced."""
        recorded = self.recorded_digests(data_dir)
        new = {p.name: sha256_file(p) for p in paths if p.name not in recorded}
        if new:
            merged = {**recorded, **new}
            write_text(self.checksum_path(data_dir), "".join(f"{d}  {f}\n" for f, d in sorted(merged.items())))

    def verify(self, data_dir) -> dict:
        """Re-hash the files named in `raw/SHA256` that exist; raise UserError on any mismatch."""
        checked = {}
        for fname, digest in self.recorded_digests(data_dir).items():
            path = self.raw_dir(data_dir) / fname
            if path.exists():
                got = sha256_file(path)
                if got != digest:
                    raise UserError(f"checksum mismatch for {path}: expected sha256 {digest} (recorded in "
                                    f"{self.checksum_path(data_dir)}), got {got}")
                checked[fname] = got
        return checked

    # ---- user help and reading -----------------------------------------------------------------
    def _member_hint(self, data_dir) -> str:
        return f"or put the extracted '{self.member}' itself in '{self.raw_dir(data_dir)}/'"

    def manual_instructions(self, data_dir) -> str:
        raw_dir = self.raw_dir(data_dir)
        lines = [f"To add {self.title} by hand, put '{self.member}' in the folder '{raw_dir}/'"
                 + (f" (or the archive '{self.archive}', which is extracted for you)"
                    if self.archive_kind and self.archive_kind != ".7z" else
                    f" (extract it from '{self.archive}')" if self.archive_kind else "") + ".",
                 "Download from: " + " or ".join(self.urls) + f" (homepage: {self.homepage}).",
                 f"Licence: {self.licence}"]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def read(self, path=None, data_dir=None):
        """Read the raw file with this dataset's reader (pandas DataFrame of clicks)."""
        if path is None:
            if data_dir is None:
                raise TypeError("read() needs a path or a data_dir")
            path = self.raw_path(data_dir)
        return self.reader_function()(path)

    def reader_function(self):
        try:
            readers = importlib.import_module("sbr_bench.data.readers")
        except ModuleNotFoundError as e:
            if e.name != "sbr_bench.data.readers":
                raise
            raise UserError(f"no reader for {self.name}: the module sbr_bench.data.readers is missing") from None
        try:
            return getattr(readers, self.reader)
        except AttributeError:
            raise UserError(f"no reader for {self.name}: sbr_bench.data.readers has no {self.reader}()") from None


SOURCES = {
    "diginetica": Source(
        name="diginetica",
        title="Diginetica (CIKM Cup 2016, track 2)",
        # The Google Drive file that SR-GNN's and PaddleRec's download scripts use
        # (https://drive.google.com/open?id=0B7XZSACQf0KdenRmMk8yVUU5LWc). Large Drive files answer with a
        # confirmation web page instead of the zip; fetch detects that and asks for a manual download.
        urls=("https://drive.google.com/uc?export=download&id=0B7XZSACQf0KdenRmMk8yVUU5LWc",),
        archive="dataset-train-diginetica.zip",
        member="train-item-views.csv",
        homepage="https://competitions.codalab.org/competitions/11161 (also https://cikm2016.cs.iupui.edu/cikm-cup/)",
        licence="released by DIGINETICA for the CIKM Cup 2016 challenge; use for research under the "
                "competition's terms (no explicit open licence).",
        default_protocol="lessr",  # the Atten-Mixer paper uses LESSR's preprocessing for Diginetica
        reader="read_diginetica",
        # No checksum is published for the zip or the csv.
        note="Some copies of train-item-views.csv start with the header sessionId;userId;itemId;timeframe;eventdate, "
             "others have none; both are accepted.",
    ),
    "gowalla": Source(
        name="gowalla",
        title="Gowalla check-ins (SNAP loc-gowalla)",
        urls=("https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz",),
        archive="loc-gowalla_totalCheckins.txt.gz",
        member="loc-gowalla_totalCheckins.txt",
        homepage="https://snap.stanford.edu/data/loc-gowalla.html",
        licence="SNAP states no licence for this file; cite E. Cho, S. A. Myers, J. Leskovec, 'Friendship and "
                "Mobility: User Movement in Location-Based Social Networks', KDD 2011.",
        default_protocol="lessr",
        reader="read_gowalla",
        # SNAP publishes no checksum. A third-party README gives md5 15bd6d99b85ee4b48fa980082286d5a2 but is
        # unclear whether it is the .gz or the .txt, so it is not used.
    ),
    "lastfm": Source(
        name="lastfm",
        title="Last.fm 1K users (Celma, MTG-UPF)",
        urls=("http://mtg.upf.edu/static/datasets/last.fm/lastfm-dataset-1K.tar.gz",
              "https://zenodo.org/records/6090214/files/lastfm-dataset-1K.tar.gz"),
        archive="lastfm-dataset-1K.tar.gz",
        member="userid-timestamp-artid-artname-traid-traname.tsv",
        homepage="http://ocelma.net/MusicRecommendationDataset/lastfm-1K.html",
        licence="distributed with permission of Last.fm for non-commercial use only (README in the archive).",
        default_protocol="lessr",
        reader="read_lastfm",
        # MD5 of the extracted tsv as given in the dataset's own README ("Version 1.0, May 2010", shipped in the
        # archive and quoted verbatim by several repositories, e.g. eifuentes/lastfm-dataset-1K README.md).
        member_md5="64747b21563e3d2aa95751e0ddc46b68",
    ),
    "yoochoose": Source(
        name="yoochoose",
        title="YOOCHOOSE clicks (RecSys Challenge 2015)",
        # The challenge's original link (used by many scripts); it may no longer answer. The same files are
        # on Kaggle (chadgostopp/recsys-challenge-2015), which needs an account, so only by hand.
        urls=("https://s3-eu-west-1.amazonaws.com/yc-rdata/yoochoose-data.7z",),
        archive="yoochoose-data.7z",
        member="yoochoose-clicks.dat",
        homepage="https://recsys.acm.org/recsys15/challenge/ (data also at "
                 "https://www.kaggle.com/datasets/chadgostopp/recsys-challenge-2015)",
        licence="released by YOOCHOOSE GmbH for the RecSys Challenge 2015; see dataset-README.txt in the archive "
                "for the terms of use (research).",
        default_protocol="srgnn",  # SR-GNN's protocol (yoochoose 1/64 and 1/4), as in the paper
        reader="read_yoochoose",
        note="The archive is 7-Zip: extract yoochoose-clicks.dat with `7z e yoochoose-data.7z yoochoose-clicks.dat`.",
    ),
}


def get_source(name) -> Source:
    """The registered Source for `name`; UserError listing the known names otherwise."""
    key = str(name).strip().lower()
    if key not in SOURCES:
        raise UserError(f"unknown dataset '{name}'; known datasets: {', '.join(sorted(SOURCES))}")
    return SOURCES[key]


__all__ = ["CHECKSUM_FILE", "SOURCES", "Source", "get_source"]
