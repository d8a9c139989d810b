"""HTML pages (Jinja2 + htmx), built on the same functions as the JSON API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from app import runs
from app.config import STATIC_DIR, get_settings
from app.models import RunStatus, utcnow
from app.run_files import checkpoints, log_tail, removal_summary
from app.schemas import RunSpec
from app.web.deps import SessionDep, SettingsDep, is_htmx, templates
from app.web.forms import check_form, fields_involved, form_context, form_values
from app.web.pickers import dataset_options, model_options
from app.web.routes.api import artifact_out, conflict_to_http, lookup_run, remove_run, start_merge, submit_run

router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def runs_context(
    session: SessionDep, status: str | None, q: str | None, sort: str | None = None, archived: bool = False
) -> dict[str, Any]:
    listed = runs.list_runs(session=session, status=status or None, search=q or None, limit=100, archived=archived)
    eval_losses = runs.final_eval_losses(session=session, run_ids=[run.id for run in listed])
    sort = sort if sort in runs.SORT_KEYS else "created"
    return {
        "runs": runs.sort_runs(listed, eval_losses, sort),
        "eval_losses": eval_losses,
        "sort": sort,
        "positions": runs.queue_positions(session=session),
        "status": status or "",
        "q": q or "",
        "statuses": RunStatus,
        "archived": archived,
        "now": utcnow(),
    }


@router.get("/", response_class=HTMLResponse)
def runs_page(
    request: Request,
    session: SessionDep,
    status: str | None = None,
    q: str | None = None,
    sort: str | None = None,
    archived: bool = False,
) -> HTMLResponse:
    """All runs, newest first (or by a column), with filters; the table refreshes itself."""
    return render(request, "runs.html", runs_context(session, status, q, sort, archived))


@router.get("/runs/table", response_class=HTMLResponse)
def runs_table(
    request: Request,
    session: SessionDep,
    status: str | None = None,
    q: str | None = None,
    sort: str | None = None,
    archived: bool = False,
) -> HTMLResponse:
    """The runs table alone, polled by the runs page."""
    return render(request, "_runs_table.html", runs_context(session, status, q, sort, archived))


@router.get("/favicon.ico", response_model=None)
def favicon() -> FileResponse:
    """The icon browsers ask for on every page (the pages also link it as /static/favicon.svg)."""
    icon = STATIC_DIR / "favicon.svg"
    return FileResponse(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(
    request: Request, session: SessionDep, from_run: Annotated[str | None, Query(alias="from")] = None
) -> HTMLResponse:
    """The new-run form: RunSpec's defaults, a past run's spec (duplicate), or fields given in the query."""
    values: dict[str, Any] = {}
    if from_run:
        source = lookup_run(session, from_run)
        values = dict(source.spec) | {"name": f"{source.name} (copy)"}
    values |= {name: request.query_params[name] for name in RunSpec.model_fields if name in request.query_params}
    return render(request, "new_run.html", form_context(values) | {"source": from_run} | choices(session))


def choices(session: SessionDep) -> dict[str, Any]:
    """The form's pickers: datasets (the sample and the uploads) and base models (bundled and local); each
    field still takes a typed path or hub id."""
    data = dataset_options(session)
    return {"pickers": {"dataset": data, "eval_dataset": data, "base_model": model_options(get_settings())}}


@router.post("/runs", response_class=HTMLResponse, response_model=None)
async def submit_run_form(request: Request, session: SessionDep) -> Response:
    """Validate the form into a RunSpec, store and queue the run, then open its page."""
    values = form_values(await request.form())
    spec, errors = check_form(values)
    if spec is None:
        # Everything the user typed stays in the form; each error sits under each field it is about.
        template = "_run_form.html" if is_htmx(request) else "new_run.html"
        return render(request, template, form_context(values, errors) | choices(session), 422)
    try:
        run = submit_run(session=session, spec=spec)
    except HTTPException as exc:
        detail = exc.detail
        if isinstance(detail, list):  # fields refused after validation, e.g. a path outside the roots
            errors = {}
            for item in detail:
                message = str(item["msg"])
                for name in fields_involved(str(item["loc"][-1]), message):
                    errors.setdefault(name, message)
        else:
            errors = {"form": str(detail)}
        template = "_run_form.html" if is_htmx(request) else "new_run.html"
        return render(request, template, form_context(values, errors) | choices(session), exc.status_code)
    url = f"/runs/{run.id}"
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """One run: status, parameter card, live loss chart, artifacts."""
    # The page draws the stored metrics, then follows the live stream from the newest stored step.
    context = artifacts_context(session, settings, run_id)
    context["removal"] = removal_summary(settings, run_id)
    context["metric_count"] = runs.count_metrics(session=session, run_id=run_id)
    return render(request, "run.html", context)


def artifacts_context(session: SessionDep, settings: SettingsDep, run_id: str) -> dict[str, Any]:
    run = lookup_run(session, run_id)
    artifacts = [artifact_out(a) for a in runs.list_artifacts(session=session, run_id=run_id)]
    return {
        "run": run,
        "artifacts": artifacts,
        "checkpoints": checkpoints(settings, run_id),
        "mergeable": runs.can_merge(session=session, run=run),
    }


@router.get("/runs/{run_id}/artifacts", response_class=HTMLResponse)
def artifacts_fragment(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The artifacts and checkpoints panel, refreshed by htmx when an artifact event arrives."""
    return render(request, "_artifacts.html", artifacts_context(session, settings, run_id))


@router.get("/runs/{run_id}/evaluation", response_class=HTMLResponse)
def evaluation_fragment(request: Request, run_id: str, session: SessionDep) -> HTMLResponse:
    """Task metrics and regression answers, base beside adapter; refreshed when the evaluation event arrives."""
    return render(request, "_evaluation.html", {"run": lookup_run(session, run_id)})


@router.get("/runs/{run_id}/log", response_class=HTMLResponse)
def log_fragment(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The last lines of the run's training log."""
    lookup_run(session, run_id)
    return render(request, "_log.html", {"lines": log_tail(settings, run_id, 80)})


@router.post("/runs/{run_id}/merge", response_class=HTMLResponse, response_model=None)
def merge_form(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """ "Merge & download": queue the merge; the panel shows its progress and then the download."""
    start_merge(session=session, run_id=run_id, dtype="auto")
    if not is_htmx(request):
        return RedirectResponse(f"/runs/{run_id}", status_code=303)
    return artifacts_fragment(request, run_id, session, settings)


@router.post("/runs/{run_id}/cancel", response_class=HTMLResponse, response_model=None)
def cancel_form(request: Request, run_id: str, session: SessionDep) -> Response:
    """Cancel from the run page."""
    lookup_run(session, run_id)
    conflict_to_http(lambda: runs.request_cancel(session=session, run_id=run_id))
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/stop", response_class=HTMLResponse, response_model=None)
def stop_form(request: Request, run_id: str, session: SessionDep) -> Response:
    """Stop and save from the run page: a checkpoint and the adapter at the next step."""
    lookup_run(session, run_id)
    conflict_to_http(lambda: runs.request_stop(session=session, run_id=run_id))
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/delete", response_class=HTMLResponse, response_model=None)
def delete_form(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete the run and its files (the run page asks first, naming what goes), then back to the list."""
    remove_run(session=session, settings=settings, run_id=run_id)
    return RedirectResponse("/", status_code=303)


@router.post("/runs/{run_id}/archive", response_class=HTMLResponse, response_model=None)
def archive_form(request: Request, run_id: str, session: SessionDep) -> Response:
    """Archive (or, with `archived=false`, bring back) from the run page."""
    lookup_run(session, run_id)
    archived = request.query_params.get("archived", "true") != "false"
    runs.set_archived(session=session, run_id=run_id, archived=archived)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)
