"""Security properties: presigned POST policies, client keys, CORS, IAM policies, upload expiry and no pickle."""

from __future__ import annotations

import ast
import base64
import json
import re
from pathlib import Path

import httpx
import pytest
from cfnlint.decode import cfn_yaml

from handler.app import create_app
from handler.config import MAX_KEY_LENGTH, Settings
from handler.uploads import InvalidKeyError, validate_upload_key
from tests.handler_support import UPLOAD_BUCKET, running_server, tiny_index

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFIX = "uploads/"
MAX_BYTES = 3_000_000
ALLOWED_ORIGIN = "https://plants.example"

# Folders of product code: everything that runs in the function, the indexer or a benchmark.
PRODUCT_FOLDERS = ("handler", "shared", "indexer", "bench")

SERVER_KEY = re.compile(r"^uploads/[0-9a-f]{32}\.(jpg|png|webp)$")


@pytest.fixture(scope="module")
def app_settings(s3_env, tmp_path_factory, tiny_model_dir, sample_dir) -> Settings:
    index_dir = tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("security-index"))
    return Settings(
        index_location=str(index_dir),
        model=str(tiny_model_dir),
        upload_bucket=UPLOAD_BUCKET,
        max_upload_bytes=MAX_BYTES,
        presign_expires=300,
        cors_origins=(ALLOWED_ORIGIN,),
    )


@pytest.fixture(scope="module")
def client(app_settings):
    with running_server(create_app(app_settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


# The presigned POST policy.


def new_form(client: httpx.Client, body: dict, **params) -> dict:
    response = client.post("/uploads", json=body, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def policy_conditions(form: dict) -> list:
    return json.loads(base64.b64decode(form["fields"]["policy"]))["conditions"]


def condition_map(form: dict) -> dict:
    """Return {field: condition} for the policy: equality conditions and content-length-range."""
    found = {}
    for condition in policy_conditions(form):
        if isinstance(condition, dict):
            (name, value), = condition.items()
            found[name.lower()] = ["eq", value]
        else:
            found[condition[0].lower()] = condition
    return found


def test_policy_fixes_every_field(client):
    form = new_form(client, {"content_type": "image/webp"})
    conditions = condition_map(form)

    assert conditions["bucket"] == ["eq", UPLOAD_BUCKET]
    assert conditions["key"] == ["eq", form["key"]]
    assert conditions["content-type"] == ["eq", "image/webp"]
    assert conditions["content-length-range"] == ["content-length-range", 1, MAX_BYTES]
    assert SERVER_KEY.match(form["key"])


def test_policy_has_no_open_condition(client):
    conditions = policy_conditions(new_form(client, {"content_type": "image/jpeg"}))
    signing = {"x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-security-token"}
    for condition in conditions:
        if isinstance(condition, list):
            assert condition[0] == "content-length-range", condition
        else:
            (name,) = condition
            assert name.lower() in {"bucket", "key", "content-type"} | signing, condition


def test_form_fields_match_policy(client):
    form = new_form(client, {"content_type": "image/png"})
    conditions = condition_map(form)

    assert form["fields"]["key"] == conditions["key"][1]
    assert form["fields"]["Content-Type"] == conditions["content-type"][1]


@pytest.mark.parametrize(
    "extra",
    [
        {"key": "results/evil.json"},
        {"key": "../index/latest.json", "prefix": "results/"},
        {"bucket": "someone-elses-bucket", "Bucket": "other"},
        {"max_bytes": 10_000_000_000, "content-length-range": [0, 10_000_000_000]},
        {"expires_in": 999_999, "fields": {"key": "x"}},
    ],
    ids=["key", "prefix", "bucket", "size", "expiry"],
)
def test_client_fields_ignored(client, extra):
    form = new_form(client, {"content_type": "image/jpeg", **extra}, key="results/from-query.json")
    conditions = condition_map(form)

    assert SERVER_KEY.match(form["key"])
    assert conditions["bucket"] == ["eq", UPLOAD_BUCKET]
    assert conditions["content-length-range"] == ["content-length-range", 1, MAX_BYTES]
    assert form["expires_in"] == 300


@pytest.mark.parametrize(
    "content_type",
    [
        "image/jpeg/../../results",
        "image/jpeg\r\nx-amz-meta-evil: 1",
        "image/svg+xml",
        "text/html",
        "image/jpeg, text/html",
        "*/*",
        "image/*",
    ],
)
def test_upload_content_type_rejected(client, content_type):
    response = client.post("/uploads", json={"content_type": content_type})

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_format"


def test_content_type_parameter_not_in_key(client):
    form = new_form(client, {"content_type": "image/jpeg; name=../../results/x.json"})

    assert SERVER_KEY.match(form["key"])
    assert condition_map(form)["content-type"] == ["eq", "image/jpeg"]


# Keys sent by clients to POST /identify.

INVALID_KEYS = {
    "parent": "uploads/../index/latest.json",
    "parent-end": "uploads/a/..",
    "other-prefix": "results/uploads/a.jpg.json",
    "prefix-lookalike": "uploads-old/a.jpg",
    "absolute": "/uploads/a.jpg",
    "backslash": "uploads\\..\\index\\latest.json",
    "backslash-inside": "uploads/a\\b.jpg",
    "nul": "uploads/a\x00.jpg",
    "newline": "uploads/a\nb.jpg",
    "delete": "uploads/a\x7f.jpg",
    "c1-control": "uploads/a\x85b.jpg",
    "empty-segment": "uploads//a.jpg",
    "dot-segment": "uploads/./a.jpg",
    "folder": "uploads/photos/",
    "encoded-parent": "uploads/%2e%2e/index/latest.json",
    "encoded-parent-upper": "uploads/%2E%2E%2Findex%2Flatest.json",
    "encoded-slash-parent": "uploads/..%2findex",
    "double-encoded": "uploads/%252e%252e/index/latest.json",
    "encoded-backslash": "uploads/a%5cb.jpg",
    "encoded-nul": "uploads/a%00.jpg",
    "encoded-prefix-escape": "uploads%2F..%2Fresults%2Fx.json",
    "lone-surrogate": "uploads/\ud800.jpg",
    "too-long": "uploads/" + "a" * MAX_KEY_LENGTH,
    "prefix-only": "uploads/",
    "empty": "",
}


@pytest.mark.parametrize("key", list(INVALID_KEYS.values()), ids=list(INVALID_KEYS))
def test_invalid_key_rejected(key):
    with pytest.raises(InvalidKeyError):
        validate_upload_key(key, PREFIX, MAX_KEY_LENGTH)


@pytest.mark.parametrize("key", list(INVALID_KEYS.values()), ids=list(INVALID_KEYS))
def test_invalid_key_http_400(client, key):
    # The JSON encoder escapes the lone surrogate, so every key reaches the server intact.
    response = client.post("/identify", content=json.dumps({"key": key}), headers={"content-type": "application/json"})

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_key"


@pytest.mark.parametrize(
    "key",
    [
        "uploads/0123456789abcdef0123456789abcdef.jpg",
        "uploads/plant photo é (1).jpg",
        "uploads/a+b 100%.jpg",
        "uploads/folder/photo.v2.png",
        "uploads/%41.jpg",
    ],
)
def test_valid_key_accepted(key):
    assert validate_upload_key(key, PREFIX, MAX_KEY_LENGTH) == key


# CORS.


def preflight(client: httpx.Client, origin: str, path: str = "/identify") -> httpx.Response:
    headers = {"origin": origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    return client.options(path, headers=headers)


def test_cors_allowed_origin(client):
    response = preflight(client, ALLOWED_ORIGIN)

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://plants.example.evil.example",
        "http://plants.example",
        "https://plants.example:8443",
        "null",
        "https://PLANTS.example.evil",
    ],
)
def test_cors_preflight_other_origin(client, origin):
    response = preflight(client, origin)
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", ["/health", "/uploads"])
def test_cors_simple_request_other_origin(client, path):
    if path == "/health":
        response = client.get(path, headers={"origin": "https://evil.example"})
    else:
        response = client.post(path, json={"content_type": "image/jpeg"}, headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_no_credentials(client):
    response = preflight(client, ALLOWED_ORIGIN)
    assert "access-control-allow-credentials" not in response.headers


def test_no_cors_without_origins(app_settings):
    settings = Settings(index_location=app_settings.index_location, model=app_settings.model)
    with running_server(create_app(settings, warm_up=False)) as url:
        response = httpx.options(
            f"{url}/identify", headers={"origin": ALLOWED_ORIGIN, "access-control-request-method": "POST"}, timeout=30
        )
    assert "access-control-allow-origin" not in response.headers


# IAM policies and lifecycle rules in the SAM template.

IAM_TYPES = {"AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::Serverless::Function"}


@pytest.fixture(scope="module")
def template() -> dict:
    return cfn_yaml.load(str(REPO_ROOT / "template.yaml"))


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def policy_documents(resource: dict) -> list[dict]:
    """Return every policy document that grants permissions through `resource`."""
    properties = resource.get("Properties", {})
    documents = []
    if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        documents.append(properties["PolicyDocument"])
    for policy in as_list(properties.get("Policies", [])):
        if isinstance(policy, dict) and "PolicyDocument" in policy:
            documents.append(policy["PolicyDocument"])
        elif isinstance(policy, dict) and "Statement" in policy:
            documents.append(policy)
        else:
            # A managed policy name or a SAM policy template: its permissions are not listed here.
            documents.append({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Source": policy}]})
    return documents


def iam_statements(template: dict) -> list[tuple[str, dict]]:
    found = []
    for name, resource in template["Resources"].items():
        if resource["Type"] not in IAM_TYPES:
            continue
        for document in policy_documents(resource):
            for statement in as_list(document["Statement"]):
                found.append((name, statement))
    return found


def resource_text(resource) -> str:
    if isinstance(resource, str):
        return resource
    if "Fn::Sub" in resource:
        sub = resource["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    if "Fn::GetAtt" in resource:
        return "GetAtt:" + ".".join(as_list(resource["Fn::GetAtt"]))
    if "Ref" in resource:
        return "Ref:" + resource["Ref"]
    return json.dumps(resource)


def test_iam_statements_found(template):
    names = {name for name, _ in iam_statements(template)}
    assert "FunctionRole" in names


def test_iam_no_wildcard_action(template):
    for name, statement in iam_statements(template):
        assert "NotAction" not in statement, name
        for action in as_list(statement["Action"]):
            assert "*" not in action, f"{name}: {statement}"


def test_iam_no_wildcard_resource(template):
    for name, statement in iam_statements(template):
        assert "NotResource" not in statement, name
        for resource in as_list(statement["Resource"]):
            text = resource_text(resource)
            # Only a key pattern after the last '/' of an object ARN may hold '*'.
            head = text.rsplit("/", 1)[0] if "/" in text else text
            assert "*" not in head, f"{name}: {text}"


def test_role_has_no_managed_policies(template):
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            assert "ManagedPolicyArns" not in resource["Properties"], name


def test_uploads_expire(template):
    function = template["Resources"]["IdentifyFunction"]["Properties"]
    upload_prefix = function["Environment"]["Variables"]["PLANT_ID_UPLOAD_PREFIX"]
    rules = template["Resources"]["UploadBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    upload_rules = [rule for rule in rules if rule.get("Prefix") == upload_prefix]

    assert len(upload_rules) == 1
    assert upload_rules[0]["Status"] == "Enabled"
    assert 1 <= upload_rules[0]["ExpirationInDays"] <= 7


def test_results_expire(template):
    function = template["Resources"]["IdentifyFunction"]["Properties"]
    results_prefix = function["Environment"]["Variables"]["PLANT_ID_RESULTS_PREFIX"]
    rules = template["Resources"]["UploadBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    result_rules = [rule for rule in rules if rule.get("Prefix") == results_prefix]

    assert len(result_rules) == 1
    assert result_rules[0]["Status"] == "Enabled"


# No pickle anywhere in product code.


def product_sources() -> list[Path]:
    return sorted(path for folder in PRODUCT_FOLDERS for path in (REPO_ROOT / folder).rglob("*.py"))


def call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def keyword_constant(node: ast.Call, name: str):
    for keyword in node.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return "missing"


def test_product_sources_found():
    assert len(product_sources()) > 20


def test_no_pickle_imports():
    forbidden = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
    for path in product_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & forbidden, f"{path.relative_to(REPO_ROOT)}:{node.lineno}"


def test_np_load_without_pickle():
    calls = 0
    for path in product_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and call_name(node) in ("np.load", "numpy.load"):
                calls += 1
                assert keyword_constant(node, "allow_pickle") is False, f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
    assert calls >= 1


def test_no_unsafe_loaders():
    unsafe = {"pd.read_pickle", "pandas.read_pickle", "yaml.load", "yaml.unsafe_load", "torch.load"}
    for path in product_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and call_name(node) in unsafe:
                if call_name(node) == "torch.load":
                    assert keyword_constant(node, "weights_only") is True, f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                    continue
                raise AssertionError(f"{call_name(node)} at {path.relative_to(REPO_ROOT)}:{node.lineno}")


def test_no_allow_pickle_true():
    for path in product_sources():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"allow_pickle\s*=\s*True", text), path.relative_to(REPO_ROOT)
