"""HTML pages of runs (Jinja2 + htmx), built on the same services as the JSON API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from app.config import STATIC_DIR, get_settings
from app.errors import DomainError, InvalidInput
from app.models import RunStatus, utcnow
from app.schemas import GGUF_TYPES, RunSpec
from app.services import checkpoints, runs
from app.services.pickers import continued_run_values, dataset_options, eval_dataset_options, model_options
from app.services.runs import RunsOverview
from app.services.spec_commands import spec_commands
from app.web.api_models import artifact_out
from app.web.deps import SessionDep, SettingsDep, context_of, is_htmx, page_or_fragment, render
from app.web.errors import http_status
from app.web.forms import check_form, fields_involved, form_context, form_values
from app.web.security import login_required

router = APIRouter(include_in_schema=False)


def runs_overview(
    session: SessionDep,
    status: str | None = None,
    q: str | None = None,
    sort: str | None = None,
    archived: bool = False,
) -> RunsOverview:
    """The runs list the page and its self-refreshing table show: filters and sort from the query."""
    return runs.runs_overview(session=session, status=status, q=q, sort=sort, archived=archived)


OverviewDep = Annotated[RunsOverview, Depends(runs_overview)]


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, overview: OverviewDep) -> HTMLResponse:
    """All runs, newest first (or by a column), with filters; the table refreshes itself."""
    return render(request, "runs.html", context_of(overview) | {"statuses": RunStatus})


@router.get("/runs/table", response_class=HTMLResponse)
def runs_table(request: Request, overview: OverviewDep) -> HTMLResponse:
    """The runs table alone, polled by the runs page."""
    return render(request, "_runs_table.html", context_of(overview) | {"statuses": RunStatus})


@router.get("/favicon.ico", response_model=None)
def favicon() -> FileResponse:
    """The icon browsers ask for on every page (the pages also link it as /static/favicon.svg)."""
    icon = STATIC_DIR / "favicon.svg"
    return FileResponse(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(
    request: Request, session: SessionDep, from_run: Annotated[str | None, Query(alias="from")] = None
) -> HTMLResponse:
    """The new-run form: RunSpec's defaults, a past run's spec (duplicate), or fields given in the query; a run to
    continue (`init_from_run`, "Continue from this run") brings its base model, the rest staying as a new form's."""
    values: dict[str, Any] = {}
    if from_run:
        source = runs.get_run(session=session, run_id=from_run)
        values = dict(source.spec) | {"name": f"{source.name} (copy)"}
    values |= {name: request.query_params[name] for name in RunSpec.model_fields if name in request.query_params}
    if (start := values.get("init_from_run")) and "base_model" not in request.query_params:
        values |= continued_run_values(session, str(start))
    return render(request, "new_run.html", form_context(values) | {"source": from_run} | choices(session))


def choices(session: SessionDep) -> dict[str, Any]:
    """The form's pickers: datasets (the sample and the uploads) and base models (bundled and local); each
    field still takes a typed path or hub id."""
    return {
        "pickers": {
            "dataset": dataset_options(session),
            "eval_dataset": eval_dataset_options(session),
            "base_model": model_options(get_settings(), session),
        }
    }


@router.post("/runs", response_class=HTMLResponse, response_model=None)
async def submit_run_form(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Validate the form into a RunSpec, store and queue the run, then open its page."""
    values = form_values(await request.form())
    spec, errors = check_form(values, settings)
    if errors:  # the module names the model lacks, in the same answer as the other errors (an inspect worker)
        for name, message in runs.module_problems_beside(values, set(errors)).items():
            errors.setdefault(name, message)
    status = 422
    if spec is not None:
        try:
            run = runs.submit_run(session=session, spec=spec)
        except DomainError as exc:
            errors, status = refused_fields(exc), http_status(exc)
        else:
            url = f"/runs/{run.id}"
            if is_htmx(request):
                return Response(status_code=204, headers={"HX-Redirect": url})
            return RedirectResponse(url, status_code=303)
    # Everything the user typed stays in the form; each error sits under each field it is about.
    template = page_or_fragment(request, "new_run.html", "_run_form.html")
    return render(request, template, form_context(values, errors) | choices(session), status)


@router.post("/runs/spec", response_class=HTMLResponse)
async def spec_fragment(request: Request, settings: SettingsDep) -> HTMLResponse:
    """What the new-run form holds, as JSON and as the `loradeck` and `curl` commands that start it; nothing is
    queued. A form that is not a run yet gets its errors instead."""
    spec, errors = check_form(form_values(await request.form()), settings)
    commands = None
    if spec is not None:
        token_needed = login_required(settings)
        commands = spec_commands(
            spec.model_dump(mode="json"), base_url=str(request.base_url), token_needed=token_needed
        )
    return render(request, "_spec_commands.html", {"commands": commands, "spec_errors": errors})


def refused_fields(exc: DomainError) -> dict[str, str]:
    """A refusal after the form validated (module names the model lacks, the queue down), under its fields."""
    if not isinstance(exc, InvalidInput) or not exc.errors:
        return {"form": str(exc)}
    errors: dict[str, str] = {}
    for error in exc.errors:
        message = str(error["msg"]).removeprefix("Value error, ")
        for name in fields_involved(str(error["loc"][-1]) if error["loc"] else "form", message):
            errors.setdefault(name, message)
    return errors


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """One run: status, parameter card, live loss chart (and the objective's charts), artifacts, the runs it
    continued from and was continued by."""
    # The page draws the stored metrics, then follows the live stream from the newest stored step.
    context = actions_context(session, settings, run_id)
    run = context["run"]
    base_url = str(request.base_url)
    context["commands"] = spec_commands(run.spec, base_url=base_url, token_needed=login_required(settings))
    # The objective's charts beside the loss come from its registry entry, not from a list in the script.
    context["objective"] = runs.objective_of(run.spec)
    context["panels"] = runs.objective_panels(context["objective"])
    context["continued_from"], context["continued_by"] = runs.continuations(session=session, run=run)
    return render(request, "run.html", context)


@router.get("/runs/{run_id}/actions", response_class=HTMLResponse)
def actions_fragment(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """What the run offers in its state (stop, cancel, delete...), fetched again when its live status changes."""
    return render(request, "_run_actions.html", actions_context(session, settings, run_id) | {"oob": True})


def actions_context(session: SessionDep, settings: SettingsDep, run_id: str) -> dict[str, Any]:
    context = artifacts_context(session, settings, run_id)
    context["removal"] = runs.removal_summary(settings=settings, run_id=run_id)
    context["metric_count"] = runs.count_metrics(session=session, run_id=run_id)
    context["continuable"] = runs.continuable(context["run"])
    context["now"] = utcnow()
    return context


def artifacts_context(session: SessionDep, settings: SettingsDep, run_id: str) -> dict[str, Any]:
    run = runs.get_run(session=session, run_id=run_id)
    return {
        "run": run,
        "artifacts": [artifact_out(a) for a in runs.list_artifacts(session=session, run_id=run_id)],
        "checkpoints": runs.run_checkpoints(session=session, settings=settings, run_id=run_id),
        "mergeable": runs.can_merge(session=session, run=run),
        "resumable": run.status in checkpoints.RESUMABLE,
        "gguf_types": GGUF_TYPES,
    }


@router.get("/runs/{run_id}/artifacts", response_class=HTMLResponse)
def artifacts_fragment(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The artifacts and checkpoints panel, refreshed by htmx when an artifact event arrives."""
    return render(request, "_artifacts.html", artifacts_context(session, settings, run_id))


@router.get("/runs/{run_id}/evaluation", response_class=HTMLResponse)
def evaluation_fragment(request: Request, run_id: str, session: SessionDep) -> HTMLResponse:
    """Task metrics and regression answers, base beside adapter; refreshed when the evaluation event arrives."""
    return render(request, "_evaluation.html", {"run": runs.get_run(session=session, run_id=run_id)})


@router.get("/runs/{run_id}/log", response_class=HTMLResponse)
def log_fragment(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The last lines of the run's training log."""
    lines = runs.run_log(session=session, settings=settings, run_id=run_id, lines=80)
    return render(request, "_log.html", {"lines": lines})


@router.post("/runs/{run_id}/merge", response_class=HTMLResponse, response_model=None)
def merge_form(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """ "Merge & download": queue the merge; the panel shows its progress and then the download."""
    runs.start_merge(session=session, run_id=run_id, dtype="auto")
    if not is_htmx(request):
        return RedirectResponse(f"/runs/{run_id}", status_code=303)
    return artifacts_fragment(request, run_id, session, settings)


@router.post("/runs/{run_id}/export", response_class=HTMLResponse, response_model=None)
async def export_form(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """ "Export GGUF": queue the export of the chosen type; the panel shows its progress, then its check and
    the download."""
    chosen = str((await request.form()).get("type", ""))
    runs.start_export(session=session, run_id=run_id, gguf_type=chosen)
    if not is_htmx(request):
        return RedirectResponse(f"/runs/{run_id}", status_code=303)
    return artifacts_fragment(request, run_id, session, settings)


@router.post("/runs/{run_id}/cancel", response_class=HTMLResponse, response_model=None)
def cancel_form(run_id: str, session: SessionDep) -> Response:
    """Cancel from the run page."""
    runs.cancel_run(session=session, run_id=run_id)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/stop", response_class=HTMLResponse, response_model=None)
def stop_form(run_id: str, session: SessionDep) -> Response:
    """Stop and save from the run page: a checkpoint and the adapter at the next step."""
    runs.stop_run(session=session, run_id=run_id)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/delete", response_class=HTMLResponse, response_model=None)
def delete_form(run_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete the run and its files (the run page asks first, naming what goes), then back to the list."""
    runs.delete_run(session=session, settings=settings, run_id=run_id)
    return RedirectResponse("/", status_code=303)


@router.post("/runs/{run_id}/archive", response_class=HTMLResponse, response_model=None)
def archive_form(request: Request, run_id: str, session: SessionDep) -> Response:
    """Archive (or, with `archived=false`, bring back) from the run page."""
    archived = request.query_params.get("archived", "true") != "false"
    runs.set_archived(session=session, run_id=run_id, archived=archived)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)
