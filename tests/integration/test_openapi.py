#!/usr/bin/env python3
"""test_openapi.py - every operation of the served OpenAPI document
against a real daemon.

The document is fetched from GET /v1/openapi.yaml (open, application/yaml)
and parsed with PyYAML (Debian's python3-yaml).  Then:

  * routes: every (method, path) of api/server.c's route table is in the
    document, and every operation of the document is a route;
  * examples: every `example`/`examples` of a JSON media type (and of a
    schema) validates against its schema, so examples cannot go stale;
  * operations: for every path, method and documented status a request
    is made that should produce that status (a recipe), and the answer
    must have that status, a documented Content-Type and a body that
    validates against the documented schema (an empty body where none is
    documented).  Generic recipes cover what any operation has: 401 (a
    daemon with --auth token, no token), 403 (a foreign Host header), 404
    (an unknown id of the path's prefix), 405 (a method the path lacks),
    200 for a GET (the fixture id of the path's prefix), 206/304/416 for
    an operation with a Range parameter.  Per-operation recipes make the
    rest (uploads, bad specs, conflicts, 413, 415, 422).  Statuses no
    recipe can produce on a healthy machine (500, 507, 429) are listed in
    UNREACHABLE with the reason; any other documented status without a
    recipe fails test_every_status_exercised, naming it;
  * probes: a fixed set of hostile requests (wrong Content-Type, empty
    and garbage bodies, bad query values, bad ranges) against every
    operation; whatever they answer must be a documented status with a
    valid body.  Every response of every request made here goes through
    the same check, so an undocumented status fails the test wherever it
    turns up.

The validator covers the OpenAPI 3.0 schema subset the document uses:
type, nullable, enum, properties, required, additionalProperties,
items, minItems/maxItems, allOf/oneOf/anyOf, $ref, pattern,
minLength/maxLength, minimum/maximum, format date-time.  Objects are
closed: a property the server sends that its schema does not list fails
(unless additionalProperties allows it), so a field added to a response
must be documented.  An unknown keyword fails too, so the validator never
passes a schema it does not understand.
"""

import json
import os
import re
import subprocess
import time

import slimd_harness as h
from slimd_harness import test

try:
    import yaml
except ImportError:          # python3-yaml is in scripts/deps.sh
    yaml = None

A = None          # --auth none: the fixtures and most requests
B = None          # --auth token: the 401 recipes
SPEC = None
FIX = {}
MAX_UPLOAD = 8 << 20
RESULTS = []      # (method, path, status, how) of every check
EXERCISED = set()  # (method, path, status) answered as documented
FAILURES = []

SRCDIR = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))

# Documented statuses that a healthy test machine cannot produce on
# demand, by status (all operations) or (method, path, status).
UNREACHABLE = {
    500: "a failure on the server's side (disk, database, memory)",
    507: "needs a full disk",
    ("POST", "/v1/jobs", 429): "needs --max-queued jobs queued at once while a worker is busy "
                               "(test_limits covers it)",
    ("POST", "/v1/jobs", 409): "a request with the same Idempotency-Key still in flight: a race",
    ("POST", "/v1/models", 409): "a request with the same Idempotency-Key still in flight: a race",
    ("POST", "/v1/datasets", 409): "a request with the same Idempotency-Key still in flight: a "
                                   "race",
}


# ---------------------------------------------------------------- the spec

def resolve(ref):
    assert ref.startswith("#/"), "only local $ref: " + ref
    node = SPEC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(node):
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(node["$ref"])
    return node


METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def operations():
    for path, item in SPEC["paths"].items():
        for m in METHODS:
            if m in item:
                yield m.upper(), path, item[m], item


def op_params(item, op):
    out = {}
    for p in item.get("parameters", []) + op.get("parameters", []):
        p = deref(p)
        out[(p["in"], p["name"])] = p
    return out


# ---------------------------------------------------------------- the validator

KNOWN = {"type", "nullable", "discriminator", "exclusiveMinimum", "exclusiveMaximum",
         "minProperties", "maxProperties", "propertyNames", "uniqueItems", "multipleOf", "enum", "properties", "required", "additionalProperties",
         "items", "minItems", "maxItems", "allOf", "oneOf", "anyOf", "$ref", "pattern",
         "minLength", "maxLength", "minimum", "maximum", "format", "description", "example",
         "default", "title", "readOnly", "writeOnly", "deprecated", "examples"}

DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def props_of(schema):
    """The property names an object schema allows: its own and those of its allOf
    members (recursively)."""
    schema = deref(schema)
    names = set(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        names |= props_of(sub)
    return names


def open_object(schema):
    schema = deref(schema)
    ap = schema.get("additionalProperties", False)
    if ap is not False:
        return True
    return any(open_object(s) for s in schema.get("allOf", []))


def validate(schema, v, where="$", siblings=None):
    """Returns a list of error strings (empty: valid)."""
    if isinstance(schema, dict) and "$ref" in schema:
        return validate(resolve(schema["$ref"]), v, where, siblings)
    errs = []
    unknown = set(schema) - KNOWN
    if unknown:
        return ["%s: the validator does not know %s" % (where, sorted(unknown))]
    if v is None:
        if schema.get("nullable") or not schema:
            return []
        if "type" in schema or "properties" in schema or "enum" in schema:
            return ["%s: null where the schema is not nullable" % where]
    t = schema.get("type")
    if t is not None and v is not None:
        ok = {"string": isinstance(v, str),
              "integer": isinstance(v, int) and not isinstance(v, bool),
              "number": isinstance(v, (int, float)) and not isinstance(v, bool),
              "boolean": isinstance(v, bool),
              "array": isinstance(v, list),
              "object": isinstance(v, dict)}.get(t)
        if ok is None:
            return ["%s: unknown type %r in the schema" % (where, t)]
        if not ok:
            return ["%s: expected %s, got %s" % (where, t, json.dumps(v)[:80])]
    if "enum" in schema and v not in schema["enum"] and not (v is None and schema.get("nullable")):
        errs.append("%s: %r not in %s" % (where, v, schema["enum"]))
    if isinstance(v, str):
        if "pattern" in schema and not re.search(schema["pattern"], v):
            errs.append("%s: %r does not match %s" % (where, v, schema["pattern"]))
        if len(v) < schema.get("minLength", 0) or len(v) > schema.get("maxLength", 1 << 62):
            errs.append("%s: length %d outside the schema's bounds" % (where, len(v)))
        if schema.get("format") == "date-time" and not DATE_TIME.match(v):
            errs.append("%s: %r is not a date-time" % (where, v))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None and (v < lo or (schema.get("exclusiveMinimum") and v == lo)):
            errs.append("%s: %r below the minimum %r" % (where, v, lo))
        if hi is not None and (v > hi or (schema.get("exclusiveMaximum") and v == hi)):
            errs.append("%s: %r above the maximum %r" % (where, v, hi))
    if isinstance(v, (int, float)) and not isinstance(v, bool) and "multipleOf" in schema:
        q = v / schema["multipleOf"]
        if abs(q - round(q)) > 1e-9:
            errs.append("%s: %r is not a multiple of %r" % (where, v, schema["multipleOf"]))
    if isinstance(v, list):
        if schema.get("uniqueItems") and len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
            errs.append("%s: items are not unique" % where)
        if len(v) < schema.get("minItems", 0) or len(v) > schema.get("maxItems", 1 << 62):
            errs.append("%s: %d items outside the schema's bounds" % (where, len(v)))
        if "items" in schema:
            for i, x in enumerate(v):
                errs += validate(schema["items"], x, "%s[%d]" % (where, i))
    if isinstance(v, dict) and ("properties" in schema or "required" in schema or
                                "additionalProperties" in schema or t == "object"):
        for k in schema.get("required", []):
            if k not in v:
                errs.append("%s: required property %r missing" % (where, k))
        if len(v) < schema.get("minProperties", 0) or len(v) > schema.get("maxProperties",
                                                                          1 << 62):
            errs.append("%s: %d properties outside the schema's bounds" % (where, len(v)))
        if "propertyNames" in schema:
            for k in v:
                errs += validate(dict(schema["propertyNames"], type="string"), k,
                                 "%s[name %r]" % (where, k))
        props = schema.get("properties", {})
        allowed = props_of(schema) | (siblings or set())
        ap = schema.get("additionalProperties", False)
        for k, x in v.items():
            if k in props:
                errs += validate(props[k], x, "%s.%s" % (where, k))
            elif k in allowed:
                continue
            elif isinstance(ap, dict):
                errs += validate(ap, x, "%s.%s" % (where, k))
            elif ap is True or open_object(schema):
                continue
            else:
                errs.append("%s: property %r is not in the schema" % (where, k))
    if "allOf" in schema:
        names = props_of(schema) | (siblings or set())
        for i, sub in enumerate(schema["allOf"]):
            errs += validate(sub, v, where, names)
    disc = schema.get("discriminator")
    if disc and isinstance(v, dict) and "oneOf" in schema:
        # the discriminator names the branch: its errors are the ones that matter
        tag = v.get(disc["propertyName"])
        ref = disc.get("mapping", {}).get(tag)
        if ref is None and "mapping" not in disc and isinstance(tag, str):
            ref = "#/components/schemas/" + tag
        if ref is None:
            return errs + ["%s: %s %r is none of %s" % (where, disc["propertyName"], tag,
                                                       sorted(disc.get("mapping", {})))]
        return errs + validate({"$ref": ref}, v, where, siblings)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            results = [validate(sub, v, where, siblings) for sub in schema[key]]
            passed = sum(1 for r in results if not r)
            if passed == 0:
                best = min(results, key=len)
                errs.append("%s: matches none of %s (closest: %s)" % (where, key, best[:3]))
            elif key == "oneOf" and passed > 1:
                errs.append("%s: matches %d of oneOf" % (where, passed))
    return errs


# ---------------------------------------------------------------- checking a response

def check_response(method, path, r, how, expect=None):
    """r answered method path (the spec's template): its status must be documented
    for the operation, and its Content-Type and body as documented.  expect: the
    status the recipe meant to produce."""
    item = SPEC["paths"].get(path)
    op = item and item.get(method.lower())
    label = "%s %s [%s]" % (method, path, how)
    problems = []
    if not op:
        problems.append("no such operation in the spec")
    else:
        responses = op["responses"]
        doc = responses.get(str(r.status)) or responses.get("%dXX" % (r.status // 100)) \
            or responses.get("default")
        if expect is not None and r.status != expect:
            problems.append("expected status %d, got %d: %s" % (expect, r.status,
                                                               r.body[:200]))
        if doc is None:
            problems.append("status %d is not documented for this operation (documented: %s); "
                            "body: %s" % (r.status, sorted(responses), r.body[:200]))
        else:
            problems += check_body(deref(doc), r, method)
    RESULTS.append((method, path, r.status, how))
    if problems:
        FAILURES.append("%s: %s" % (label, "; ".join(problems)))
    elif expect is not None:
        EXERCISED.add((method, path, expect))
    return r


def failure_report():
    """FAILURES grouped: one line per operation and problem, with the requests that hit it."""
    groups = {}
    for f in FAILURES:
        m = re.match(r"^(\S+ \S+) \[(.*?)\]: (.*)$", f, re.S)
        key = (m.group(1), m.group(3)) if m else (f, "")
        groups.setdefault(key, []).append(m.group(2) if m else "")
    return "%d responses disagree with the spec:\n%s" % (len(FAILURES), "\n".join(
        "%s [%s]: %s" % (op, ", ".join(hows[:3]) + (" and %d more" % (len(hows) - 3)
                                                    if len(hows) > 3 else ""), prob)
        for (op, prob), hows in groups.items()))


def check_body(doc, r, method):
    content = doc.get("content")
    ctype = (r.header("Content-Type") or "").split(";")[0].strip().lower()
    if not content:
        if r.body and method != "HEAD":
            return ["a body (%s, %d bytes) where the spec documents none" % (ctype, len(r.body))]
        return []
    if not r.body and method != "HEAD":
        return ["an empty body where the spec documents %s" % sorted(content)]
    media = content.get(ctype)
    if media is None:
        return ["Content-Type %r is not documented (%s)" % (ctype, sorted(content))]
    schema = media.get("schema")
    if ctype == "application/json" and schema is not None:
        try:
            body = json.loads(r.body)
        except ValueError as e:
            return ["body is not JSON: %s" % e]
        return validate(schema, body)
    return []


# ---------------------------------------------------------------- the daemons and fixtures

def token(data_dir, scope, name):
    p = subprocess.run([h.slimd_bin(), "token", "create", "--scope", scope, "--name", name,
                        "--data-dir", data_dir] + h.store_flags(data_dir), capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode().strip()


def dataset_bytes():
    n = 16
    inputs = h.Tensor("input", "F32", [n, 4], h.f32_bytes(h.gaussian(n * 4, 9)))
    labels = h.Tensor("labels", "I64", [n], h.i64_bytes([i % 3 for i in range(n)]))
    return h.safetensors_bytes([inputs, labels])


def model_bytes(seed=1):
    return h.safetensors_bytes([h.t_f32("layer.weight", [32, 32], seed),
                                h.t_f32("head.weight", [8, 32], seed + 1)])


def nan_model():
    w = h.gaussian(64, 5)
    w[17] = float("nan")
    return h.safetensors_bytes([h.Tensor("w", "F32", [8, 8], h.f32_bytes(w))])


QUANT = {"op": "quantize", "dtype": "int8", "granularity": "channel", "symmetric": True}


def setup():
    global A, B, SPEC
    A = h.Daemon(workers=1, max_upload=MAX_UPLOAD).start()
    bdir = h.make_tmpdir()
    FIX["b_read"] = token(bdir, "read", "reader")
    B = h.Daemon(workers=1, data_dir=bdir, args=["--auth", "token"]).start()
    r = A.get("/v1/openapi.yaml")
    if yaml is None:
        raise h.HarnessError("python3-yaml is not installed (scripts/deps.sh installs it)")
    assert r.status == 200, r
    FIX["openapi_response"] = r
    try:
        SPEC = yaml.safe_load(r.body.decode())
    except yaml.YAMLError as e:
        raise h.HarnessError("the served api/openapi.yaml is not YAML: %s" % e)
    # fixtures on A
    FIX["model"] = A.upload(model_bytes(), name="m").json["id"]
    FIX["nan_model"] = A.upload(nan_model(), name="nan").json["id"]
    r = A.request("POST", "/v1/datasets?name=d", body=dataset_bytes(),
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    FIX["dataset"] = r.json["id"]
    ok = A.wait_job(A.submit({"model": FIX["model"], "passes": [
        {"op": "prune", "sparsity": 0.5}, {"op": "lowrank", "rank": 4}, QUANT]}).json["id"])
    assert ok["state"] == "succeeded", ok
    FIX["job"] = ok["id"]
    bad = A.wait_job(A.submit({"model": FIX["nan_model"], "passes": [QUANT]}).json["id"])
    assert bad["state"] == "failed", bad
    FIX["failed_job"] = bad["id"]
    r = A.post_json("/v1/tokens", {"name": "fixture", "scopes": ["read"]})
    assert r.status == 201, r
    FIX["token"] = r.json["id"]


def teardown():
    A.stop()
    B.stop()


# ---------------------------------------------------------------- recipes

PREFIX_FIXTURE = {"mdl_": "model", "ds_": "dataset", "job_": "job", "tok_": "token"}


def id_prefix(item, op):
    p = op_params(item, op).get(("path", "id"))
    if not p:
        return None
    m = re.match(r"\^([a-z]+_)", deref(p).get("schema", {}).get("pattern", ""))
    return m.group(1) if m else None


def fill(path, ident):
    return path.replace("{id}", ident)


def fixture_url(method, path, item, op):
    if "{id}" not in path:
        return path
    prefix = id_prefix(item, op)
    if prefix not in PREFIX_FIXTURE:
        return None
    return fill(path, FIX[PREFIX_FIXTURE[prefix]])


def missing_url(path, item, op):
    prefix = id_prefix(item, op) or "x_"
    return fill(path, prefix + "0123456789abcdef")


def throwaway(kind):
    if kind == "model":
        return A.upload(model_bytes(seed=7), name="throwaway").json["id"]
    if kind == "dataset":
        r = A.request("POST", "/v1/datasets", body=dataset_bytes(),
                      headers={"Content-Type": "application/octet-stream"})
        return r.json["id"]
    if kind == "token":
        return A.post_json("/v1/tokens", {"name": "throwaway", "scopes": ["read"]}).json["id"]
    raise AssertionError(kind)


def octet(body):
    return {"body": body, "headers": {"Content-Type": "application/octet-stream"}}


def oversized(limit):
    return {"body": b"\0" * (limit + 1), "headers": {"Content-Type": "application/octet-stream"}}


def recipes():
    """(method, path) -> {status: () -> (daemon, method, url, kwargs)}: the requests that
    produce a status the generic recipes cannot."""
    m, ds, job, bad_job = FIX["model"], FIX["dataset"], FIX["job"], FIX["failed_job"]
    spec_ok = {"model": m, "passes": [QUANT]}
    return {
        ("POST", "/v1/models"): {
            201: lambda: (A, "POST", "/v1/models?name=r", octet(model_bytes(3))),
            400: lambda: (A, "POST", "/v1/models", octet(b"")),
            413: lambda: (A, "POST", "/v1/models", oversized(MAX_UPLOAD)),
            415: lambda: (A, "POST", "/v1/models", octet(b"PK\x03\x04 not a model format" * 8)),
            422: lambda: idempotency_reused("/v1/models", octet(model_bytes(4)),
                                            octet(model_bytes(5))),
        },
        ("GET", "/v1/models"): {400: lambda: (A, "GET", "/v1/models?limit=0", {})},
        ("DELETE", "/v1/models/{id}"): {
            204: lambda: (A, "DELETE", "/v1/models/" + throwaway("model"), {}),
        },
        ("POST", "/v1/datasets"): {
            201: lambda: (A, "POST", "/v1/datasets", octet(dataset_bytes())),
            400: lambda: (A, "POST", "/v1/datasets", octet(b"")),
            413: lambda: (A, "POST", "/v1/datasets", oversized(MAX_UPLOAD)),
            415: lambda: (A, "POST", "/v1/datasets", octet(b"not a dataset at all" * 8)),
        },
        ("GET", "/v1/datasets"): {400: lambda: (A, "GET", "/v1/datasets?offset=-1", {})},
        ("DELETE", "/v1/datasets/{id}"): {
            204: lambda: (A, "DELETE", "/v1/datasets/" + throwaway("dataset"), {}),
        },
        ("GET", "/v1/jobs"): {400: lambda: (A, "GET", "/v1/jobs?state=bogus", {})},
        ("POST", "/v1/jobs"): {
            202: lambda: (A, "POST", "/v1/jobs", {"json_body": spec_ok}),
            400: lambda: (A, "POST", "/v1/jobs", {"json_body": {"model": m, "passes": [
                {"op": "prun"}]}}),
            404: lambda: (A, "POST", "/v1/jobs", {"json_body": {
                "model": "mdl_0123456789abcdef", "passes": [QUANT]}}),
            413: lambda: (A, "POST", "/v1/jobs", {"body": b" " * (65 << 10),
                                                  "headers": {"Content-Type": "application/json"}}),
            415: lambda: (A, "POST", "/v1/jobs", {"body": json.dumps(spec_ok).encode(),
                                                  "headers": {"Content-Type": "text/plain"}}),
            422: lambda: (A, "POST", "/v1/jobs", {"json_body": {
                "model": big_model(), "passes": [QUANT], "limits": {"memory_mb": 1}}}),
        },
        ("POST", "/v1/jobs/{id}/cancel"): {
            200: lambda: (A, "POST", "/v1/jobs/%s/cancel" % queued_job(), {}),
            409: lambda: (A, "POST", "/v1/jobs/%s/cancel" % job, {}),
        },
        ("GET", "/v1/jobs/{id}/report"): {
            409: lambda: (A, "GET", "/v1/jobs/%s/report" % bad_job, {})},
        ("GET", "/v1/jobs/{id}/report.html"): {
            409: lambda: (A, "GET", "/v1/jobs/%s/report.html" % bad_job, {})},
        ("GET", "/v1/jobs/{id}/artifact"): {
            409: lambda: (A, "GET", "/v1/jobs/%s/artifact" % bad_job, {})},
        ("POST", "/v1/tokens"): {
            201: lambda: (A, "POST", "/v1/tokens", {"json_body": {"name": "t", "scopes": ["read"]}}),
            400: lambda: (A, "POST", "/v1/tokens", {"json_body": {"name": "t", "scopes": []}}),
            415: lambda: (A, "POST", "/v1/tokens", {"body": b"{}",
                                                    "headers": {"Content-Type": "text/plain"}}),
        },
        ("DELETE", "/v1/tokens/{id}"): {
            204: lambda: (A, "DELETE", "/v1/tokens/" + throwaway("token"), {})},
        # operations other branches add: used when the spec documents them
        ("DELETE", "/v1/jobs/{id}"): {
            204: lambda: (A, "DELETE", "/v1/jobs/" + finished_job(), {}),
            409: lambda: (A, "DELETE", "/v1/jobs/" + running_job(), {}),
        },
        ("POST", "/v1/jobs/{id}/pin"): {200: lambda: (A, "POST", "/v1/jobs/%s/pin" % job, {})},
        ("POST", "/v1/jobs/{id}/unpin"): {
            200: lambda: (A, "POST", "/v1/jobs/%s/unpin" % job, {})},
        ("GET", "/v1/jobs/compare"): {
            200: lambda: (A, "GET", "/v1/jobs/compare?a=%s&b=%s" % (job, finished_job()), {}),
            400: lambda: (A, "GET", "/v1/jobs/compare", {}),
            404: lambda: (A, "GET", "/v1/jobs/compare?a=job_0123456789abcdef&b=" + job, {}),
            409: lambda: (A, "GET", "/v1/jobs/compare?a=%s&b=%s" % (job, canceled_job()), {}),
        },
    }


def big_model():
    if "big_model" not in FIX:
        FIX["big_model"] = A.upload(h.safetensors_bytes([h.t_f32("w", [1024, 1024], 11)]),
                                    name="big").json["id"]
    return FIX["big_model"]


def onnx_model():
    if "onnx_model" not in FIX:
        with open(os.path.join(SRCDIR, "tests", "fixtures", "mlp.onnx"), "rb") as f:
            FIX["onnx_model"] = A.upload(f.read(), name="mlp.onnx").json["id"]
    return FIX["onnx_model"]


def block_worker():
    """Occupies A's only worker with an exact SVD of 1024x1024 (canceled at the end of
    the test), so that a job submitted next stays queued for a while."""
    slow = A.submit({"model": big_model(), "passes": [
        {"op": "lowrank", "rank": 512, "algorithm": "exact"}]}).json["id"]
    FIX.setdefault("slow_jobs", []).append(slow)


def idempotency_reused(path, first, second):
    """A second request under the first one's Idempotency-Key with another body."""
    key = "openapi-test-%d" % len(FIX.setdefault("keys", []))
    FIX["keys"].append(key)
    for kw in (first, second):
        kw.setdefault("headers", {})["Idempotency-Key"] = key
    r = A.request("POST", path, **first)
    assert r.status in (200, 201, 202), r
    return (A, "POST", path, second)


def finished_job():
    """A job of the fixture model that succeeded, made for the request."""
    return A.wait_job(A.submit({"model": FIX["model"], "passes": [QUANT]}).json["id"],
                      timeout=120)["id"]


def canceled_job():
    """A job of the fixture model that never succeeded (canceled while queued)."""
    jid = queued_job()
    r = A.request("POST", "/v1/jobs/%s/cancel" % jid)
    assert r.status == 200, r
    return jid


def running_job():
    """A job seen running just now (a slow job that ended before it was seen, on a
    machine fast enough or a poll slow enough, is replaced by another)."""
    for _ in range(5):
        block_worker()
        jid = FIX["slow_jobs"][-1]
        deadline = time.time() + 120
        while time.time() < deadline:
            state = A.get("/v1/jobs/" + jid).json["state"]
            if state == "running":
                return jid
            if state != "queued":
                break
            time.sleep(0.02)
    raise AssertionError("no slow job was seen running")


def queued_job():
    """A job that is still queued when its cancel comes."""
    block_worker()
    return A.submit({"model": FIX["model"], "passes": [QUANT]}).json["id"]


def conflict_recipes():
    """409s that need a job in flight: deleting its model or its dataset."""
    out = {}
    def model_in_use():
        mid = throwaway("model")
        block_worker()
        A.submit({"model": mid, "passes": [QUANT]})
        return (A, "DELETE", "/v1/models/" + mid, {})
    def dataset_in_use():
        did = throwaway("dataset")
        block_worker()
        A.submit({"model": onnx_model(), "passes": [QUANT], "eval": {"dataset": did}})
        return (A, "DELETE", "/v1/datasets/" + did, {})
    out[("DELETE", "/v1/models/{id}")] = {409: model_in_use}
    out[("DELETE", "/v1/datasets/{id}")] = {409: dataset_in_use}
    return out


def generic(method, path, item, op, status, specific):
    """The generic recipe for status, or None."""
    secured = op.get("security", SPEC.get("security")) != []
    params = op_params(item, op)
    url = fixture_url(method, path, item, op)
    if status == 401 and secured:
        return lambda: (B, method, missing_url(path, item, op), {})
    if status == 403:
        return lambda: (A, method, url or missing_url(path, item, op),
                        {"headers": {"Host": "evil.example"}})
    if status == 404 and "{id}" in path:
        return lambda: (A, method, missing_url(path, item, op), {})
    if status == 405:
        other = [x for x in ("PATCH", "PUT", "DELETE", "POST", "GET") if x.lower() not in item]
        return lambda: (A, other[0], url or missing_url(path, item, op), {"_as": method})
    if method == "GET" and status == 200 and url:
        return lambda: (A, "GET", url, {})
    if method == "GET" and status == 400 and url:
        return lambda: (A, "GET", url + "?no_such_parameter=1", {})
    if ("header", "Range") in params and url:
        if status == 206:
            return lambda: (A, "GET", url, {"headers": {"Range": "bytes=0-9"}})
        if status == 416:
            return lambda: (A, "GET", url, {"headers": {"Range": "bytes=999999999-"}})
    if ("header", "If-None-Match") in params and url and status == 304:
        def not_modified():
            etag = A.get(url).header("ETag")
            return (A, "GET", url, {"headers": {"If-None-Match": etag}})
        return not_modified
    return None


def run_recipe(fn, method, path, status, how):
    daemon, m, url, kw = fn()
    kw = dict(kw)
    as_method = kw.pop("_as", method)
    r = daemon.request(m, url, **kw)
    # a 405 is the answer of the path for another method: checked against the operation
    # the recipe stands for (every operation of a path documents the same 405)
    return check_response(as_method, path, r, how, expect=status)


# ---------------------------------------------------------------- tests

@test
def test_served():
    """GET /v1/openapi.yaml: 200, application/yaml, open without a token, the file in the tree"""
    r = FIX["openapi_response"]
    assert r.header("Content-Type").split(";")[0] == "application/yaml", r.header("Content-Type")
    with open(os.path.join(SRCDIR, "api", "openapi.yaml"), "rb") as f:
        assert r.body == f.read(), "the served document is not api/openapi.yaml"
    rb = B.get("/v1/openapi.yaml")
    assert rb.status == 200, "the document needs no token: %r" % rb
    assert SPEC["openapi"].startswith("3.0"), SPEC["openapi"]
    check_response("GET", "/v1/openapi.yaml", r, "served", expect=200)


def route_table():
    with open(os.path.join(SRCDIR, "api", "server.c")) as f:
        src = f.read()
    table = src[src.index("static const struct route routes[]"):]
    table = table[:table.index("};")]
    return set(re.findall(r'\{"([A-Z]+)", "([^"]+)"', table))


@test
def test_routes_match_spec():
    """every route of api/server.c is documented, and every documented operation is a route"""
    routes = route_table()
    assert len(routes) >= 20, routes
    ops = {(m, p) for m, p, op, item in operations()}
    missing = sorted(routes - ops)
    extra = sorted(ops - routes)
    assert not missing, "routes not in api/openapi.yaml: %s" % missing
    assert not extra, "operations in api/openapi.yaml that api/server.c has no route for: %s" % extra


@test
def test_examples():
    """every example in the document validates against its schema"""
    errs = []

    def walk(node, where):
        if isinstance(node, dict):
            schema = node.get("schema")
            if schema is not None and ("example" in node or "examples" in node):
                exs = [node["example"]] if "example" in node else [
                    deref(e).get("value") for e in node["examples"].values()]
                for i, ex in enumerate(exs):
                    if isinstance(schema, dict) and deref(schema).get("format") == "binary":
                        continue
                    errs.extend("%s example %d: %s" % (where, i, e)
                                for e in validate(schema, ex))
            elif "example" in node and ("type" in node or "properties" in node or
                                        "$ref" in node or "allOf" in node) \
                    and not where.endswith("/properties"):
                errs.extend("%s example: %s" % (where, e) for e in validate(
                    {k: v for k, v in node.items() if k != "example"}, node["example"]))
            for k, v in node.items():
                if k not in ("example", "examples"):
                    walk(v, where + "/" + str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, "%s[%d]" % (where, i))

    walk(SPEC, "#")
    assert not errs, "stale examples:\n" + "\n".join(errs)


def documented_statuses():
    for method, path, op, item in operations():
        for status in op["responses"]:
            if status.isdigit():
                yield method, path, op, item, int(status)


@test
def test_operations():
    """every documented status of every operation, made by a recipe, answers as documented"""
    del FAILURES[:]
    specific = recipes()
    for k, v in conflict_recipes().items():
        specific[k] = {**specific.get(k, {}), **v}
    for method, path, op, item, status in documented_statuses():
        fn = (specific.get((method, path)) or {}).get(status) or \
            generic(method, path, item, op, status, specific)
        if fn is None:
            continue
        run_recipe(fn, method, path, status, "recipe %d" % status)
    for slow in FIX.get("slow_jobs", []):
        A.request("POST", "/v1/jobs/%s/cancel" % slow)
    assert not FAILURES, failure_report()


@test
def test_probes():
    """hostile requests against every operation answer only documented statuses"""
    del FAILURES[:]
    probes = [
        ("no body", {}),
        ("empty octet-stream", octet(b"")),
        ("garbage octet-stream", octet(b"\x00\xff garbage \x01" * 16)),
        ("text/plain", {"body": b"hello", "headers": {"Content-Type": "text/plain"}}),
        ("form", {"body": b"a=b", "headers": {
            "Content-Type": "application/x-www-form-urlencoded"}}),
        ("bad JSON", {"body": b"{not json", "headers": {"Content-Type": "application/json"}}),
        ("JSON array", {"json_body": []}),
        ("bad query", {"_query": "?limit=abc&offset=x"}),
        ("bad range", {"headers": {"Range": "bytes=5-2"}}),
        ("range past the end", {"headers": {"Range": "bytes=999999999-999999999"}}),
        ("multiple ranges", {"headers": {"Range": "bytes=0-1,3-4"}}),
        ("stale etag", {"headers": {"If-None-Match": '"0000"'}}),
        ("multipart without a boundary", {"body": b"x", "headers": {
            "Content-Type": "multipart/form-data"}}),
        ("multipart without fields", {"body": b"--b--\r\n", "headers": {
            "Content-Type": "multipart/form-data; boundary=b"}}),
        ("a browser's cross-site form", {"body": b"a=b", "headers": {
            "Content-Type": "text/plain", "Origin": "http://evil.example",
            "Sec-Fetch-Site": "cross-site", "User-Agent": "Mozilla/5.0"}}),
        ("a browser's same-origin form", {"body": b"a=b", "headers": {
            "Content-Type": "application/x-www-form-urlencoded",
            "Sec-Fetch-Site": "same-origin", "User-Agent": "Mozilla/5.0"}}),
        ("a tar that holds no model", {"body": b"\0" * 1024, "headers": {
            "Content-Type": "application/x-tar"}}),
        ("unknown name", {"_query": "?name=%01bad"}),
    ]
    for method, path, op, item in operations():
        for how, kw in probes:
            kw = dict(kw)
            query = kw.pop("_query", "")
            urls = [fixture_url(method, path, item, op)]
            if "{id}" in path and id_prefix(item, op) == "job_":
                urls.append(fill(path, FIX["failed_job"]))   # a job in another state
            if "{id}" in path:
                urls.append(missing_url(path, item, op))
            if method == "DELETE":
                urls = urls[1:]   # the fixtures stay; their deletion is the recipes' business
            for url in filter(None, urls):
                r = A.request(method, url + query, **kw)
                check_response(method, path, r, "probe: %s" % how)
    for slow in FIX.get("slow_jobs", []):
        A.request("POST", "/v1/jobs/%s/cancel" % slow)
    assert not FAILURES, failure_report()


@test
def test_every_status_exercised():
    """every documented status is exercised by a recipe, or listed as unreachable"""
    left = []
    for method, path, op, item, status in documented_statuses():
        if (method, path, status) in EXERCISED:
            continue
        if status in UNREACHABLE or (method, path, status) in UNREACHABLE:
            continue
        left.append("%s %s %d" % (method, path, status))
    assert not left, ("documented statuses no recipe produced (add a recipe in "
                      "test_openapi.py, or fix the spec):\n  " + "\n  ".join(left))


if __name__ == "__main__":
    h.run(setup, teardown, daemons=lambda: [A, B])
