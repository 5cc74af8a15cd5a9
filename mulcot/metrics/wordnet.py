"""WordNet 3.0 for nltk's METEOR, found and set up without network access.

nltk's METEOR uses WordNet synonyms. nltk normally downloads WordNet from the internet; offline, the Debian
packages carry the same WordNet 3.0 database. One-time set-up (what ``scripts/setup-wordnet.sh`` does)::

    apt-get install -y wordnet-base wordnet-sense-index
    python -c "from mulcot.metrics.wordnet import install_wordnet_from_debian as f; print(f())"

:func:`install_wordnet_from_debian` copies (nltk refuses symlinks) ``/usr/share/wordnet/*`` into ``<nltk data
dir>/corpora/wordnet/`` and writes the ``lexnames`` file nltk also needs, which Debian omits: it is generated
from the man page ``/usr/share/man/man5/lexnames.5WN.gz`` (lines ``NN<TAB>name<TAB>category`` with category 1
noun, 2 verb, 3 adjective, 4 adverb), or from the same fixed WordNet 3.0 table built in here when the man
page is absent (Docker images often drop man pages).

The nltk data dir is ``$NLTK_DATA`` (its first entry) when set, else ``~/.cache/mulcot/nltk_data``.
nltk (3.10+) only reads corpora under its allowed data roots, so loading adds the dir holding WordNet to
``nltk.data.path``.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mulcot.errors import WordNetMissingError

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
DEBIAN_LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")
DEFAULT_NLTK_DATA = Path("~/.cache/mulcot/nltk_data")

#: Files nltk's WordNetCorpusReader opens when it loads (``lexnames`` is the one Debian lacks).
REQUIRED_FILES = (
    "lexnames",
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "noun.exc",
    "verb.exc",
    "adj.exc",
    "adv.exc",
)

SETUP_COMMAND = (
    "apt-get install -y wordnet-base wordnet-sense-index && python -c "
    "'from mulcot.metrics.wordnet import install_wordnet_from_debian as f; f()' (or run scripts/setup-wordnet.sh)"
)

# WordNet 3.0 lexicographer files: number, name (category = the name's prefix). Same as lexnames(5WN).
_LEXNAMES_30 = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def default_nltk_data_dir() -> Path:
    """The nltk data dir WordNet is installed into: first entry of ``$NLTK_DATA``, else
    ``~/.cache/mulcot/nltk_data``."""
    env = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p.strip()]
    return Path(env[0]).expanduser() if env else DEFAULT_NLTK_DATA.expanduser()


def search_dirs(nltk_data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """nltk data dirs searched for WordNet, in order.

    An explicit ``nltk_data_dir`` is the only one searched; otherwise ``$NLTK_DATA`` entries, then
    ``~/.cache/mulcot/nltk_data``, then nltk's own ``nltk.data.path``.
    """
    if nltk_data_dir is not None:
        return [Path(nltk_data_dir).expanduser()]
    dirs = [Path(p).expanduser() for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p.strip()]
    dirs.append(DEFAULT_NLTK_DATA.expanduser())
    try:
        import nltk.data

        dirs += [Path(str(getattr(p, "path", p))).expanduser() for p in nltk.data.path]
    except ImportError:  # pragma: no cover - nltk is a dependency
        pass
    unique: dict[str, Path] = {}
    for d in dirs:
        unique.setdefault(str(d), d)
    return list(unique.values())


@dataclass(frozen=True)
class WordNetStatus:
    """Where WordNet was found (``path``: a ``corpora/wordnet`` dir or ``corpora/wordnet.zip``) or why not."""

    available: bool
    path: Path | None = None
    data_dir: Path | None = None
    searched: tuple[Path, ...] = field(default_factory=tuple)
    reason: str | None = None

    @property
    def message(self) -> str:
        """One line: where WordNet is, or what is missing and the command that fixes it."""
        if self.available:
            return f"WordNet found at {self.path}"
        return f"{self.reason}; fix: {SETUP_COMMAND}"


def _check_dir(wn_dir: Path) -> str | None:
    missing = [f for f in REQUIRED_FILES if not (wn_dir / f).is_file()]
    if not missing:
        return None
    return f"{wn_dir} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"


def _check_zip(zip_path: Path) -> str | None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile) as err:
        return f"{zip_path} is unreadable ({err})"
    missing = [f for f in REQUIRED_FILES if f"wordnet/{f}" not in names]
    return f"{zip_path} lacks {', '.join(missing[:3])}" if missing else None


def wordnet_status(nltk_data_dir: str | os.PathLike[str] | None = None) -> WordNetStatus:
    """Find WordNet 3.0 in the nltk data dirs (see :func:`search_dirs`) without loading it.

    A dir counts when ``corpora/wordnet/`` holds every file in :data:`REQUIRED_FILES` as a regular file, or
    ``corpora/wordnet.zip`` (nltk's downloader format) holds them under ``wordnet/``.
    """
    searched = tuple(search_dirs(nltk_data_dir))
    problems: list[str] = []
    for data_dir in searched:
        wn_dir = data_dir / "corpora" / "wordnet"
        if wn_dir.is_dir():
            problem = _check_dir(wn_dir)
            if problem is None:
                return WordNetStatus(True, wn_dir, data_dir, searched)
            problems.append(problem)
        wn_zip = data_dir / "corpora" / "wordnet.zip"
        if wn_zip.is_file():
            problem = _check_zip(wn_zip)
            if problem is None:
                return WordNetStatus(True, wn_zip, data_dir, searched)
            problems.append(problem)
    where = ", ".join(str(d) for d in searched)
    reason = "WordNet (for METEOR) not found in " + where
    if problems:
        reason += " (" + "; ".join(problems) + ")"
    return WordNetStatus(False, None, None, searched, reason)


_READERS: dict[str, Any] = {}
_LOCK = threading.Lock()
#: Seconds the last fresh WordNet load took (0.0 when it came from the cache).
last_load_seconds: float = 0.0


def ensure_wordnet(nltk_data_dir: str | os.PathLike[str] | None = None) -> Any:
    """Return a loaded ``nltk`` WordNetCorpusReader (cached per location) or raise
    :class:`WordNetMissingError`.

    The dir holding WordNet is appended to ``nltk.data.path`` (nltk only reads under its data roots). The
    reader is fully loaded here (~10-20 s the first time in a process), so later METEOR calls are pure
    scoring.
    """
    global last_load_seconds
    status = wordnet_status(nltk_data_dir)
    if not status.available:
        raise WordNetMissingError(status.message)
    assert status.path is not None and status.data_dir is not None
    key = str(status.path.resolve())
    with _LOCK:
        if key in _READERS:
            last_load_seconds = 0.0
            return _READERS[key]
        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        root = str(status.data_dir.resolve())
        if root not in [str(getattr(p, "path", p)) for p in nltk.data.path]:
            nltk.data.path.append(root)
        if status.path.suffix == ".zip":
            pointer: Any = nltk.data.find("corpora/wordnet.zip/wordnet/", paths=[root])
        else:
            pointer = str(status.path.resolve())
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # "The multilingual functions are not available": METEOR needs English only.
                warnings.simplefilter("ignore", UserWarning)
                reader = WordNetCorpusReader(pointer, None)
        except (OSError, ValueError, AssertionError, LookupError) as err:
            raise WordNetMissingError(
                f"WordNet at {status.path} failed to load ({err}); fix: {SETUP_COMMAND}"
            ) from err
        last_load_seconds = time.perf_counter() - start
        _READERS[key] = reader
        return reader


def lexnames_text(man_page: str | os.PathLike[str] | None = DEBIAN_LEXNAMES_MAN) -> str:
    """The ``lexnames`` file nltk wants: ``NN<TAB>name<TAB>category`` per lexicographer file, 45 lines.

    Parsed from the WordNet man page ``lexnames(5WN)`` (gzipped troff, table rows ``NN<TAB>name<TAB>...``)
    when it exists, else the built-in WordNet 3.0 table. Category: 1 noun, 2 verb, 3 adjective, 4 adverb
    (from the name's prefix).
    """
    names = list(_LEXNAMES_30)
    if man_page is not None and Path(man_page).is_file():
        with gzip.open(man_page, "rt", encoding="utf-8", errors="replace") as fh:
            parsed = {}
            for line in fh:
                m = re.match(r"^(\d\d)\t\s*((?:noun|verb|adj|adv)\.\w+)", line)
                if m:
                    parsed[int(m.group(1))] = m.group(2)
        if parsed and sorted(parsed) == list(range(len(parsed))):
            names = [parsed[i] for i in range(len(parsed))]
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(names))


def install_wordnet_from_debian(
    target_dir: str | os.PathLike[str] | None = None,
    *,
    source_dir: str | os.PathLike[str] = DEBIAN_WORDNET_DIR,
    lexnames_man: str | os.PathLike[str] | None = DEBIAN_LEXNAMES_MAN,
) -> Path:
    """Copy Debian's WordNet into ``<target_dir>/corpora/wordnet/`` for nltk; return that folder.

    ``target_dir`` defaults to :func:`default_nltk_data_dir`. Needs the Debian packages ``wordnet-base`` and
    ``wordnet-sense-index`` (``source_dir`` = ``/usr/share/wordnet``); files are copied, never linked (nltk
    refuses links), and ``lexnames`` is written from :func:`lexnames_text`. Idempotent.
    """
    src = Path(source_dir)
    if not (src / "index.noun").is_file():
        raise WordNetMissingError(
            f"{src} has no WordNet database; install it first: apt-get install -y {' '.join(DEBIAN_PACKAGES)}"
        )
    target = Path(target_dir).expanduser() if target_dir is not None else default_nltk_data_dir()
    wn_dir = target / "corpora" / "wordnet"
    wn_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.is_file():
            dest = wn_dir / item.name
            if dest.is_symlink():
                dest.unlink()
            shutil.copyfile(item, dest)  # follows links in the source; writes a regular file
    (wn_dir / "lexnames").write_text(lexnames_text(lexnames_man), encoding="utf-8")
    problem = _check_dir(wn_dir)
    if problem:
        raise WordNetMissingError(
            f"WordNet copy incomplete: {problem}; reinstall: apt-get install -y "
            + " ".join(DEBIAN_PACKAGES)
        )
    return wn_dir
