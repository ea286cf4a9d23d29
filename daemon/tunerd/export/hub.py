"""Push a trained adapter (or the model fused with it, optionally a GGUF) to a Hugging Face Hub repo.

    check_hub(repo) -> (endpoint, token)      before any slow work: ConnectionError (UNAVAILABLE)
                                              offline, without a token or with the Hub out of reach
    stage(folder, adapter, model, facts, repo, fused, gguf_quant, progress) -> [(path_in_repo, file)]
    push(endpoint, token, repo, private, files, progress) -> the repo URL

What is pushed is first written into a staging folder: the adapter's PEFT layout at the top and
mlx-lm's in `mlx/` (export/layout.py), or the fused model (export/fuse.py), the GGUF if asked
(export/gguf.py), and README.md, the model card (export/model_card.py) with its loss plot
(loss.svg). `stage` returns exactly the files a push uploads; the upload is one commit with
huggingface_hub (`HfApi.create_repo`, `preupload_lfs_files` per file for the progress, then
`create_commit`), against $HF_ENDPOINT (default https://huggingface.co), the token from
$HF_TOKEN or `hf auth login`. Offline ($HF_HUB_OFFLINE) or unreachable, it fails in about 2 s
with no retries: the one offline rule (tunerd/hub.py) is asked first.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..files import MARKER
from ..hub import endpoint as hub_endpoint
from ..hub import offline, reachable

REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_hub(repo: str) -> tuple[str, str]:
    if not repo:
        raise ValueError("repo: required for --format hub (USER/NAME)")
    if not REPO.match(repo) or len(repo) > 96:
        raise ValueError(f"repo {repo!r}: not a Hub repo id; use USER/NAME (letters, digits, '-', '_', '.')")
    from huggingface_hub import get_token

    if offline():
        raise ConnectionError(f"Hub push to {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; "
                              "unset it and try again with the network on")
    token = get_token()
    if not token:
        raise ConnectionError(f"Hub push to {repo}: no Hugging Face token; run `hf auth login` (or set HF_TOKEN "
                              "in the daemon's environment) and try again")
    ok, why = reachable(fresh=True)   # the one offline rule (tunerd/hub.py): a 2 s connect check
    if not ok:
        raise ConnectionError(f"Hub push to {repo}: {why}; the push needs the network")
    endpoint = hub_endpoint()
    return endpoint, token


def stage(folder: Path, adapter: Path, model: str, facts: dict, repo: str, fused: bool = False,
          gguf_quant: str = "", progress=None) -> list[tuple[str, Path]]:
    """Write what the repo gets into `folder` (an empty one); [(path in the repo, local file)]."""
    from . import model_card
    from .layout import export_adapter

    folder = Path(folder)
    files: list[tuple[str, Path]] = []

    def add(root: Path, prefix: str = "") -> None:
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER):
            files.append((prefix + f.relative_to(root).as_posix(), f))

    contents = {"fused": fused, "gguf": "", "layouts": (), "plot": ""}
    fused_dir = None
    if fused or gguf_quant:
        from .fuse import fuse
        if progress:
            progress("fuse", message=f"fusing the adapter into {model}")
        fused_dir = fuse(model, adapter, folder / "fused", dequantize=True)
    if fused:
        add(fused_dir)
    else:
        if progress:
            progress("stage", message="copying the adapter (peft and mlx layouts)")
        layouts = []
        for name, prefix in (("peft", ""), ("mlx", "mlx/")):
            try:
                add(export_adapter(adapter, folder / name, name), prefix)
                layouts.append(name)
            except FileNotFoundError:   # an adapter saved in one layout only
                continue
        contents["layouts"] = tuple(layouts)
    if gguf_quant:
        from .gguf import check_quant, write_gguf
        name = f"{repo.split('/')[-1]}-{check_quant(gguf_quant)}.gguf"
        files.append((name, write_gguf(fused_dir, folder / name, gguf_quant, name=repo.split("/")[-1],
                                       progress=progress)))
        contents["gguf"] = name
    if progress:
        progress("card", message="writing the model card")
    svg = model_card.loss_svg(facts)
    if svg:
        (folder / "loss.svg").write_text(svg)
        files.append(("loss.svg", folder / "loss.svg"))
        contents["plot"] = "loss.svg"
    (folder / "README.md").write_text(model_card.card(facts, repo, contents))
    files.append(("README.md", folder / "README.md"))
    return files


def push(endpoint: str, token: str, repo: str, private: bool, files: list, progress=None,
         message: str = "Upload from MacTuner") -> str:
    """One commit of `files` to `repo` (created if new, `private` then); the repo's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    total = sum(f.stat().st_size for _, f in files)
    try:
        url = str(api.create_repo(repo, private=private, exist_ok=True))
        ops, done = [], 0
        for path_in_repo, f in files:
            op = CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(f))
            api.preupload_lfs_files(repo, additions=[op])
            ops.append(op)
            done += f.stat().st_size
            if progress:
                progress("upload", done, total, message=path_in_repo)
        api.create_commit(repo, operations=ops, commit_message=message)
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", 0)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if status in (401, 403):
            raise PermissionError(f"Hub push to {repo}: the token may not write there ({first})") from None
        raise ConnectionError(f"Hub push to {repo} failed: {first}") from None
    except Exception as e:   # httpx's transport errors: the connection dropped during the upload
        if not type(e).__module__.startswith("httpx"):
            raise
        raise ConnectionError(f"Hub push to {repo} failed: {type(e).__name__}: {e}") from None
    return url
