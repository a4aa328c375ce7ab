#!/usr/bin/env python3
"""Checks Concourse pipelines and task files against the pydantic models of the PyPI
package ol-concourse (0.5.3, installed into ci/.venv by ci/setup): an independent
reading of Concourse's schema, next to lockstep's own `validate-pipeline`.

    ci/.venv/bin/python ci/concourse_models.py [--vars FILE] PIPELINE.yml ... TASK.yml ...

A file whose top level has `jobs`, `resources` or `resource_types` is a pipeline; one with
`platform`, `run`, `inputs`, `params`, ... is a task file. A pipeline's ((vars)) are
resolved as `fly set-pipeline -l FILE` resolves them: a string that is exactly one ((var))
takes the var's value whatever its type, a ((var)) inside a longer string is replaced by
its text (a string or an integer, else it is a problem), `((a.b))` is field `b` of var `a`,
and an unresolved ((var)) is a problem. The vars file is the one given by `--vars FILE`
just before the pipeline, else `<dir>/<name>-vars.example.yml` beside `<dir>/<name>.yml`.

The pipeline validates against ol-concourse's `Pipeline`. Its `Job.plan` and every step
hook are typed as the empty `Step` model, which accepts anything, so each step of each
plan is validated against its own model (`GetStep`, `PutStep`, `TaskStep`,
`SetPipelineStep`, `LoadVarStep`, `InParallelStep`, `DoStep`, `TryStep`), and so is every
step nested in it: `in_parallel` (a list, or `{steps: [...]}`), `do`, `try` and the hooks
`on_success`, `on_failure`, `on_error`, `on_abort`, `ensure` (of steps and of jobs). A task
file validates against `TaskConfig`. Validation is strict (as Concourse's Go decoder: no
"true" for a boolean, no number for a string), and a key the model does not know is a
problem even where the model allows extra keys (`Resource`).

Prints one line per problem (file, path, what is wrong) and exits 1 when there is any;
else prints a summary line with the counts and exits 0.
"""

import json
import re
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=DeprecationWarning)  # update_forward_refs()

try:
    import yaml
    from pydantic import BaseModel, ValidationError
    from ol_concourse.lib.models import pipeline as models
except ImportError as e:  # pragma: no cover
    print(f"ol-concourse: cannot import {e.name}: run ci/setup (installs ol-concourse==0.5.3 into ci/.venv)", file=sys.stderr)
    sys.exit(2)

# Strict keys: a model that allows extra keys (in 0.5.3: Resource, extra="allow") would
# take a typo such as `chek_every:` silently, and Concourse would reject it. Such models
# forbid them here, and every model is rebuilt so the ones that embed them see it. (The
# models with extra="ignore" are left alone: `Step`, the untyped plan item and hook, whose
# keys are checked against the step's own model below, and `Vars`, any mapping.)
_models = [m for m in vars(models).values() if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == models.__name__]
for _m in _models:
    if _m.model_config.get("extra") == "allow":
        _m.model_config["extra"] = "forbid"
for _m in _models:
    _m.model_rebuild(force=True)

# The step models, by the key that names a step's type (Concourse's atc.StepPrecedence
# lists the same core keys).
STEP_MODELS = {
    "get": models.GetStep,
    "put": models.PutStep,
    "task": models.TaskStep,
    "set_pipeline": models.SetPipelineStep,
    "load_var": models.LoadVarStep,
    "in_parallel": models.InParallelStep,
    "do": models.DoStep,
    "try": models.TryStep,
}
HOOKS = ("on_success", "on_failure", "on_error", "on_abort", "ensure")
PIPELINE_KEYS = {"jobs", "resources", "resource_types", "groups", "var_sources", "display"}

# A var reference, as Concourse's vars package reads it: an optional `source:` prefix, then
# a name and fields separated by dots (a segment may be quoted).
VAR_RE = re.compile(r"\(\(([-/.\w:\" ]+?)\)\)")


class Problems:
    def __init__(self):
        self.lines = []

    def add(self, file, path, msg):
        self.lines.append(f"{file}: {path or '<top>'}: {msg}")


def show(value):
    """A short rendering of a value for a problem line (never a long text: it may be a
    secret's example value)."""
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value) if len(value) <= 40 and "\n" not in value else f"a string of {len(value)} characters"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- ((var)) interpolation

def is_local(ref):
    """((.:name)): a local var, set while the build runs (an across step's var, a load_var
    step's file), never by the vars file."""
    return ref.strip().startswith(".:")


def lookup(vars_, ref):
    """The value of ((ref)) in the vars, or raises KeyError."""
    ref = ref.strip()
    if ":" in ref.split(".", 1)[0]:
        raise KeyError(ref)  # a named var source's var: fly -l cannot resolve it
    parts = [p.strip('"') for p in re.findall(r'"[^"]*"|[^.]+', ref)]
    value = vars_
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            raise KeyError(ref)
        value = value[part]
    return value


def interpolate(node, vars_, file, path, problems):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            key = interpolate(k, vars_, file, path, problems) if isinstance(k, str) else k
            out[key] = interpolate(v, vars_, file, f"{path}.{key}" if path else str(key), problems)
        return out
    if isinstance(node, list):
        return [interpolate(v, vars_, file, path + item_label(i, v), problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    whole = VAR_RE.fullmatch(node)
    if whole and is_local(whole.group(1)):
        return node
    if whole:
        try:
            return lookup(vars_, whole.group(1))
        except KeyError:
            problems.add(file, path, f"unresolved var (({whole.group(1)})): not in the vars file")
            return node

    def text(m):
        if is_local(m.group(1)):
            return m.group(0)
        try:
            value = lookup(vars_, m.group(1))
        except KeyError:
            problems.add(file, path, f"unresolved var (({m.group(1)})): not in the vars file")
            return m.group(0)
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return str(value)
        problems.add(file, path, f"var (({m.group(1)})) inside a longer string is {show(value)}, not a string or integer")
        return m.group(0)

    return VAR_RE.sub(text, node)


# ---------------------------------------------------------------- validation

def item_label(i, item):
    name = item.get("name") if isinstance(item, dict) else None
    return f"[{i}]({name})" if isinstance(name, str) else f"[{i}]"


def loc_path(base, loc, data):
    """A pydantic error location as a path, list items named by their `name`."""
    path = base
    for part in loc:
        if isinstance(part, int) and isinstance(data, list):
            item = data[part] if part < len(data) else None
            path, data = path + item_label(part, item), item
        else:
            path = f"{path}.{part}" if path else str(part)
            data = data.get(part) if isinstance(data, dict) else None
    return path


def validate(model, data, file, path, problems):
    """Validates data against model (strictly, as JSON: Concourse decodes JSON) and reports
    every error, naming list items by their `name`."""
    try:
        model.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as e:
        errors = e.errors()
        # A union (e.g. in_parallel: a list of steps or {steps: [...]}) reports one error per
        # branch; where a branch got past the type check, the other branches' mere "should
        # be a list/an object/'latest'" say nothing more.
        deeper = [err["loc"] for err in errors]
        errors = [err for err in errors if not (
            (err["type"].endswith("_type") or err["type"] == "literal_error") and len(err["loc"]) > 0
            and any(len(d) > len(err["loc"]) and d[:len(err["loc"]) - 1] == err["loc"][:-1] for d in deeper))]
        for err in errors:
            where = loc_path(path, err["loc"], data)
            if err["type"] == "extra_forbidden":
                problems.add(file, where, f"unknown key {err['loc'][-1]!r} (validating against ol-concourse's {model.__name__}: no such field)")
            else:
                problems.add(file, where, f"{err['msg']} (got {show(err.get('input'))}; validating against ol-concourse's {model.__name__})")


def coerced_string(value):
    """Concourse's atc.CoercedString: how a task's params reach it as environment
    variables. null is "", a string itself, a number its text, anything else its JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


class Counts:
    pipelines = jobs = steps = tasks = 0


def check_step(step, file, path, problems, counts):
    counts.steps += 1
    if not isinstance(step, dict):
        problems.add(file, path, f"a step must be a mapping, got {show(step)}")
        return
    kinds = [k for k in STEP_MODELS if k in step]
    if len(kinds) != 1:
        what = "no step type" if not kinds else f"more than one step type ({', '.join(kinds)})"
        problems.add(file, path, f"{what}: a step needs exactly one of {', '.join(STEP_MODELS)}")
        return
    kind = kinds[0]
    model = STEP_MODELS[kind]
    label = f"{path}({kind}{' ' + step[kind] if isinstance(step[kind], str) else ''})"
    data = dict(step)
    if kind == "put" and "no_get" in data:
        # Model gap, tolerated: Concourse's put step has `no_get: boolean` (Concourse
        # v7.9.0, "skips the implicit get after the put"), but ol-concourse 0.5.3's PutStep
        # has no such field (its generator put `no_get` on Job instead), so PutStep would
        # reject it as an extra key. Checked here as Concourse types it, then left out.
        no_get = data.pop("no_get")
        if not isinstance(no_get, bool):
            problems.add(file, f"{label}.no_get", f"must be a boolean, got {show(no_get)}")
    if "across" in data:
        # Model gap, tolerated: Concourse's across step (atc/steps.go, AcrossStep) takes
        # `fail_fast` beside `across`, and each var (AcrossVarConfig, unmarshalled strictly)
        # only var, values and max_in_flight; ol-concourse 0.5.3 has `fail_fast` inside each
        # var instead. Checked here as Concourse has them, then given to the model without it.
        if "fail_fast" in data:
            fail_fast = data.pop("fail_fast")
            if not isinstance(fail_fast, bool):
                problems.add(file, f"{label}.fail_fast", f"must be a boolean, got {show(fail_fast)}")
        for i, var in enumerate(data["across"] if isinstance(data["across"], list) else []):
            extra = sorted(set(var) - {"var", "values", "max_in_flight"}) if isinstance(var, dict) else []
            for key in extra:
                problems.add(file, f"{label}.across[{i}].{key}", f"unknown key '{key}' (Concourse's across var takes var, values, max_in_flight)")
    if kind == "task" and isinstance(data.get("params"), dict):
        # Model gap, tolerated: ol-concourse 0.5.3 types TaskStep.params as
        # {string: string|null}, but Concourse's task step `params` takes any value: each
        # one reaches the task as an environment variable coerced as atc.CoercedString
        # does (a number as its text, a map or list as its JSON). lockstep's pipelines
        # pass LOCKSTEP_CONFIG as a map and LOCKSTEP_INSTANCES as a list that way. The
        # params are given to the model as Concourse coerces them.
        data["params"] = {k: coerced_string(v) for k, v in data["params"].items()}
    validate(model, data, file, label, problems)
    for hook in HOOKS:
        if hook in step:
            check_step(step[hook], file, f"{label}.{hook}", problems, counts)
    if kind == "try":
        check_step(step["try"], file, f"{label}.try", problems, counts)
    elif kind == "do" and isinstance(step["do"], list):
        for i, sub in enumerate(step["do"]):
            check_step(sub, file, f"{label}.do[{i}]", problems, counts)
    elif kind == "in_parallel":
        par = step["in_parallel"]
        subs, base = (par, f"{label}.in_parallel") if isinstance(par, list) else (
            par.get("steps") if isinstance(par, dict) else None, f"{label}.in_parallel.steps")
        for i, sub in enumerate(subs if isinstance(subs, list) else []):
            check_step(sub, file, f"{base}[{i}]", problems, counts)


def check_pipeline(file, doc, vars_, problems, counts):
    counts.pipelines += 1
    doc = interpolate(doc, vars_, file, "", problems)
    validate(models.Pipeline, doc, file, "", problems)
    jobs = doc.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        problems.add(file, "jobs", "a pipeline needs at least one job")
        return
    for j, job in enumerate(jobs):
        if not isinstance(job, dict):
            continue  # reported by Pipeline's validation
        counts.jobs += 1
        label = f"jobs[{j}]({job.get('name')})"
        plan = job.get("plan")
        if not isinstance(plan, list) or not plan:
            problems.add(file, f"{label}.plan", "a job needs a plan of at least one step")
            plan = plan if isinstance(plan, list) else []
        for i, step in enumerate(plan):
            check_step(step, file, f"{label}.plan[{i}]", problems, counts)
        for hook in HOOKS:
            if hook in job:
                check_step(job[hook], file, f"{label}.{hook}", problems, counts)


def check_task(file, doc, problems, counts):
    counts.tasks += 1
    validate(models.TaskConfig, doc, file, "", problems)


def load_yaml(path, problems):
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        problems.add(path, "", f"cannot read: {e}")
        return None


def main(argv):
    problems, counts = Problems(), Counts()
    files, explicit_vars = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--vars":
            explicit_vars = next(args, None)
            if explicit_vars is None:
                print("usage: concourse_models.py [--vars FILE] FILE.yml ...", file=sys.stderr)
                return 2
        elif arg.startswith("-"):
            print(f"concourse_models.py: unknown option {arg}\nusage: concourse_models.py [--vars FILE] FILE.yml ...", file=sys.stderr)
            return 2
        else:
            files.append((arg, explicit_vars))
            explicit_vars = None
    if not files:
        print("usage: concourse_models.py [--vars FILE] FILE.yml ...", file=sys.stderr)
        return 2

    for file, vars_file in files:
        doc = load_yaml(file, problems)
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.add(file, "", f"the top level must be a mapping, got {show(doc)}")
        elif PIPELINE_KEYS & doc.keys():
            if vars_file is None:
                conventional = Path(file).with_name(Path(file).stem + "-vars.example.yml")
                vars_file = str(conventional) if conventional.is_file() else None
            vars_ = {}
            if vars_file is not None:
                vars_ = load_yaml(vars_file, problems)
                if not isinstance(vars_, dict):
                    problems.add(vars_file, "", "a vars file must be a mapping")
                    vars_ = {}
            check_pipeline(file, doc, vars_, problems, counts)
        elif set(models.TaskConfig.model_fields) & doc.keys():
            check_task(file, doc, problems, counts)
        else:
            problems.add(file, "", "neither a pipeline (jobs, resources, ...) nor a task file (platform, run, ...)")

    for line in problems.lines:
        print(line)
    summary = (f"ol-concourse: {counts.pipelines} pipelines, {counts.jobs} jobs, {counts.steps} steps, "
               f"{counts.tasks} task files: {len(problems.lines)} problems")
    print(summary)
    return 1 if problems.lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
