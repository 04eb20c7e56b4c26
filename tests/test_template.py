"""The SAM template passes cfn-lint and gives the function least-privilege permissions; the Dockerfile matches it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "template.yaml"
DOCKERFILE = REPO_ROOT / "infra" / "Dockerfile"
LAMBDA_REQUIREMENTS = REPO_ROOT / "infra" / "requirements-lambda.txt"

UPLOAD_BUCKET_SUB = "${UploadBucketPrefix}-uploads-${AWS::AccountId}-${AWS::Region}"


@pytest.fixture(scope="module")
def template() -> dict:
    return cfn_yaml.load(str(TEMPLATE))


@pytest.fixture(scope="module")
def resources(template) -> dict:
    return template["Resources"]


@pytest.fixture(scope="module")
def function(resources) -> dict:
    return resources["IdentifyFunction"]


@pytest.fixture(scope="module")
def statements(resources) -> list[dict]:
    """Every Allow or Deny statement of the function's role."""
    found = []
    for policy in resources["FunctionRole"]["Properties"]["Policies"]:
        found.extend(policy["PolicyDocument"]["Statement"])
    return found


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def resource_text(resource) -> str:
    """Return an ARN as written: a plain string, or the format string of Fn::Sub."""
    if isinstance(resource, str):
        return resource
    if "Fn::Sub" in resource:
        sub = resource["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    if "Fn::GetAtt" in resource:
        return "GetAtt:" + ".".join(as_list(resource["Fn::GetAtt"]))
    raise AssertionError(f"unexpected resource form: {resource}")


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    completed = subprocess.run(
        [str(cfn_lint), str(TEMPLATE)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_sam_transform(template):
    assert template["Transform"] == "AWS::Serverless-2016-10-31"


# The function's permissions.


def test_no_wildcard_actions(statements):
    for statement in statements:
        for action in as_list(statement["Action"]):
            assert "*" not in action, statement


def test_no_wildcard_resources(statements):
    for statement in statements:
        for resource in as_list(statement["Resource"]):
            text = resource_text(resource)
            # Only the last path segment of an object ARN may be a key pattern such as uploads/*.
            head = text.rsplit("/", 1)[0] if "/" in text else text
            assert text != "*", statement
            assert "*" not in head, statement


def test_s3_resources_name_one_bucket(statements):
    for statement in statements:
        for resource in as_list(statement["Resource"]):
            text = resource_text(resource)
            if ":s3:::" not in text:
                continue
            bucket = text.split(":s3:::", 1)[1].split("/", 1)[0]
            assert "*" not in bucket, statement


def test_only_allow_statements(statements):
    assert {statement["Effect"] for statement in statements} == {"Allow"}


def permission_pairs(statements) -> set[tuple[str, str]]:
    return {
        (action, resource_text(resource))
        for statement in statements
        for action in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    }


def test_reads_index_prefix(statements):
    pair = ("s3:GetObject", "arn:${AWS::Partition}:s3:::${IndexBucketName}/${IndexPrefix}/*")
    assert pair in permission_pairs(statements)


def test_reads_uploads(statements):
    pair = ("s3:GetObject", f"arn:${{AWS::Partition}}:s3:::{UPLOAD_BUCKET_SUB}/uploads/*")
    assert pair in permission_pairs(statements)


def test_writes_uploads_for_presigned_post(statements):
    pair = ("s3:PutObject", f"arn:${{AWS::Partition}}:s3:::{UPLOAD_BUCKET_SUB}/uploads/*")
    assert pair in permission_pairs(statements)


def test_writes_results(statements):
    pair = ("s3:PutObject", f"arn:${{AWS::Partition}}:s3:::{UPLOAD_BUCKET_SUB}/results/*")
    assert pair in permission_pairs(statements)


def test_writes_only_uploads_and_results(statements):
    put_resources = {resource for action, resource in permission_pairs(statements) if action == "s3:PutObject"}
    assert all(resource.endswith(("/uploads/*", "/results/*")) for resource in put_resources)


def test_function_uses_role(function):
    assert function["Properties"]["Role"] == {"Fn::GetAtt": ["FunctionRole", "Arn"]}


def test_function_has_no_managed_policies(function):
    assert "Policies" not in function["Properties"]


# The function.


def test_function_image(function):
    assert function["Properties"]["PackageType"] == "Image"
    assert function["Metadata"]["Dockerfile"] == "infra/Dockerfile"
    assert function["Metadata"]["DockerContext"] == "."


def test_function_size(function):
    assert function["Properties"]["MemorySize"] == 3008
    assert function["Properties"]["Timeout"] == 30


def test_function_environment(function):
    variables = function["Properties"]["Environment"]["Variables"]
    expected = {
        "PLANT_ID_INDEX",
        "PLANT_ID_MODEL",
        "PLANT_ID_UPLOAD_BUCKET",
        "PLANT_ID_UPLOAD_PREFIX",
        "PLANT_ID_RESULTS_PREFIX",
        "PLANT_ID_MAX_UPLOAD_BYTES",
        "PLANT_ID_INDEX_CHECK_SECONDS",
    }
    assert expected <= set(variables)
    assert variables["PLANT_ID_MODEL"] == "/opt/model"


def test_environment_names_upload_bucket_without_ref(function):
    # A !Ref to the bucket here would close a dependency cycle through the S3 event.
    assert function["Properties"]["Environment"]["Variables"]["PLANT_ID_UPLOAD_BUCKET"] == {"Fn::Sub": UPLOAD_BUCKET_SUB}


def test_s3_event_on_uploads_prefix(function):
    event = function["Properties"]["Events"]["Upload"]
    rules = event["Properties"]["Filter"]["S3Key"]["Rules"]

    assert event["Type"] == "S3"
    assert {"Name": "prefix", "Value": "uploads/"} in rules


def test_http_routes(function):
    routes = {
        (event["Properties"]["Method"], event["Properties"]["Path"])
        for event in function["Properties"]["Events"].values()
        if event["Type"] == "HttpApi"
    }
    assert {("POST", "/identify"), ("POST", "/uploads"), ("GET", "/health")} <= routes
    assert ("GET", "/species/{plant_id}/thumbnail") in routes


# The HTTP API and the bucket.


def test_api_throttling(resources):
    settings = resources["HttpApi"]["Properties"]["DefaultRouteSettings"]
    assert {"ThrottlingBurstLimit", "ThrottlingRateLimit"} <= set(settings)


def test_api_cors_origin(resources):
    cors = resources["HttpApi"]["Properties"]["CorsConfiguration"]
    assert cors["AllowOrigins"] == [{"Ref": "AllowedOrigin"}]


def test_bucket_name_from_parameters(resources):
    assert resources["UploadBucket"]["Properties"]["BucketName"] == {"Fn::Sub": UPLOAD_BUCKET_SUB}


def test_bucket_cors(resources):
    rule = resources["UploadBucket"]["Properties"]["CorsConfiguration"]["CorsRules"][0]

    assert rule["AllowedOrigins"] == [{"Ref": "AllowedOrigin"}]
    assert sorted(rule["AllowedMethods"]) == ["GET", "POST", "PUT"]


def test_bucket_lifecycle(resources):
    rules = resources["UploadBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiry = {rule.get("Prefix"): rule.get("ExpirationInDays") for rule in rules}

    assert expiry["uploads/"] == 1
    assert expiry["results/"] == 7


def test_bucket_private(resources):
    block = resources["UploadBucket"]["Properties"]["PublicAccessBlockConfiguration"]
    assert all(block[name] is True for name in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))


def test_bucket_encrypted(resources):
    encryption = resources["UploadBucket"]["Properties"]["BucketEncryption"]
    assert encryption["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_outputs(template):
    assert {"ApiUrl", "UploadBucketName", "IndexBucketName"} <= set(template["Outputs"])


# The Dockerfile and the image's requirements.


def test_dockerfile_base_image():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=public\.ecr\.aws/lambda/python:3\.1\d$", text, re.MULTILINE)


def test_dockerfile_cpu_torch():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "torch==2.14.1 --index-url https://download.pytorch.org/whl/cpu" in text


def test_dockerfile_bakes_model():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert 'python -m shared.onnx_export --model "${MODEL_ID}" --out /opt/model' in text


def test_dockerfile_offline_hub():
    text = DOCKERFILE.read_text(encoding="utf-8")

    assert "HF_HUB_OFFLINE=1" in text
    assert "HF_HOME=/tmp/hf" in text


def test_dockerfile_cmd():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert text.rstrip().endswith('CMD ["handler.lambda_entry.handler"]')


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[name.split("[", 1)[0].strip().lower()] = version.strip()
    return found


def test_lambda_pins_match_requirements():
    project = pins(REPO_ROOT / "requirements.txt")
    for name, version in pins(LAMBDA_REQUIREMENTS).items():
        assert project.get(name) == version, name


def test_lambda_requirements_without_torch():
    assert {"torch", "torchvision", "transformers"}.isdisjoint(pins(LAMBDA_REQUIREMENTS))
