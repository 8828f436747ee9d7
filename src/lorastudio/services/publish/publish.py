"""`publish(version_dir, options)`: one commit to the Hub, or the same files into a folder.

The upload is `create_repo(exist_ok=True)` + one `create_commit`, so a failure leaves the repo
as it was. The token comes from HF_TOKEN or huggingface_hub's stored login and is only ever
handed to huggingface_hub: every message that leaves this module has it scrubbed.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorastudio.core.atomic import atomic_path
from lorastudio.core.errors import LorastudioError
from lorastudio.services.publish.options import PublishOptions, publish_options


class PublishError(LorastudioError):
    pass


@dataclass
class PublishResult:
    repo: str
    files: list[str]
    total_bytes: int
    url: str | None = None  # the commit URL after an upload
    folder: Path | None = None  # the folder after --to-folder
    card: str = ""


def resolve_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def prepare(version_dir: Path, options: PublishOptions):
    """(RepoFiles with README.md, card text): everything that goes into the repo."""
    from lorastudio.core.safetensors_header import read_header
    from lorastudio.services.publish.card import build_card
    from lorastudio.services.publish.repo_files import collect
    from lorastudio.services.report import read_version

    config, report, files = collect(version_dir)
    _, lora = read_version(Path(version_dir).resolve())
    metadata = read_header(lora).metadata
    card = build_card(name=lora.stem, config=config, report=report, metadata=metadata, files=files, options=options)
    files.files["README.md"] = card.encode("utf-8")
    return files, card


def publish(version_dir: Path, options: PublishOptions | dict, *, token: str | None = None,
            endpoint: str | None = None, say: Callable[[str], None] = lambda s: None,
            confirm: Callable[[str], bool] | None = None) -> PublishResult:
    options = publish_options(options)
    if options.to_folder is None:
        # Every check that needs no network comes before any work.
        from huggingface_hub import constants

        token = token or resolve_token()
        if not token:
            raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --to-folder "
                               "for a dry run)")
        if constants.is_offline_mode():
            raise PublishError("Hugging Face offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): "
                               "unset it to publish, or use --to-folder")
    files, card = prepare(version_dir, options)
    names = sorted(files.files)
    total = files.total_bytes()
    if options.to_folder is not None:
        folder = write_folder(files, Path(options.to_folder))
        say(f"wrote the repo contents ({len(names)} files, {total / 1e6:.1f} MB) to {folder}")
        return PublishResult(options.repo, names, total, folder=folder, card=card)
    where = f"{options.repo} ({'private' if options.private else 'public'}, branch {options.revision or 'main'})"
    if confirm is not None and not confirm(f"publish {len(names)} files ({total / 1e6:.1f} MB) to {where}?"):
        raise PublishError("not published: not confirmed")
    try:
        url = _upload(files, options, token, endpoint)
    except PublishError as exc:
        raise PublishError(_scrub(str(exc), token)) from None
    say(f"published {len(names)} files to {where}: {url}")
    return PublishResult(options.repo, names, total, url=url, card=card)


def write_folder(files, folder: Path) -> Path:
    """Exactly the repo's files under `folder` (replaced as a whole: no leftovers from before)."""
    folder = Path(folder).resolve()
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        for rel, src in files.files.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst) as part:
                if isinstance(src, bytes):
                    part.write_bytes(src)
                else:
                    shutil.copyfile(src, part)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _upload(files, options: PublishOptions, token: str, endpoint: str | None) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    namespace = options.repo.split("/")[0]
    host = api.endpoint
    try:
        who = api.whoami()
        _check_namespace(who, namespace)
        api.create_repo(options.repo, private=options.private, exist_ok=True)
        if options.revision:
            api.create_branch(options.repo, branch=options.revision, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=src if isinstance(src, bytes) else str(src))
               for rel, src in sorted(files.files.items())]
        info = api.create_commit(options.repo, ops, revision=options.revision,
                                 commit_message=options.commit_message or "Upload LoRA with lorastudio")
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise PublishError(f"token rejected by {host} (401): log in again or set another HF_TOKEN; "
                               f"nothing was published") from None
        if status == 403:
            raise PublishError(f"no write access to the namespace {namespace!r} on {host} (403); "
                               f"nothing was published") from None
        raise PublishError(f"the Hub refused the upload to {options.repo} ({status}): {_first_line(exc)}; "
                           f"nothing was published") from None
    except _transport_errors() as exc:
        raise PublishError(f"cannot reach the Hub at {host} ({type(exc).__name__}); nothing was published") from None
    return str(info.commit_url)


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub 2.x talks through httpx2, 1.x through httpx: a connection failure is
    # either's TransportError (or an OSError from below them).
    import importlib

    out: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            out.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def _check_namespace(who: dict, namespace: str) -> None:
    names = {who.get("name")} | {o.get("name") for o in who.get("orgs") or []}
    if namespace not in names:
        raise PublishError(f"no write access to the namespace {namespace!r}: the token belongs to "
                           f"{who.get('name')!r}, who is not a member of it; nothing was published")
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError("the token is read-only: create a token with write access; nothing was published")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def endpoint_from_env(environ) -> str | None:
    """HF_ENDPOINT from the environment the entry point passes in, read when a command runs
    (huggingface_hub reads it once, at import)."""
    return environ.get("HF_ENDPOINT") or None
