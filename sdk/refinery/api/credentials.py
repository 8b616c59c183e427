"""No credential at rest: what a pipeline's spec must not carry.

Whatever the spec holds is stored in etcd, copied into every stage's ConfigMap and Job, shown by
`kubectl get -o yaml` to anyone who may read pipelines, and quoted in status and Events. So a
secret written into a source URI — `https://user:password@host/…`, a presigned URL's
`?X-Amz-Signature=…`, `s3://KEY:SECRET@bucket/…` — or into a literal `env` value is refused at
admission (the CRD's CEL rules below, generated from the same patterns) and by `refinery
validate`. Credentials reach pods as references to Secrets: `env[].valueFrom.secretKeyRef` or
`envFrom[].secretRef`.

One pattern serves both Python's `re` and the API server's RE2 (CEL `matches`): only the common
subset (classes, alternation, `(?i)`) is used.
"""

from __future__ import annotations

import re

# user-info in the authority: `s3://`, `https://` (and an MLflow server's `http://`) never need an `@` before the first `/`;
# `hf://` has `@<revision>` after the repo, so only an `@` followed by a further path segment
# (`hf://token@org/name`, `hf://user:pw@datasets/…`) is user-info there.
USERINFO_PATTERN = r"^(s3|https?)://[^/]*@|^hf://[^/]*@[^/]*/[^/]"
# A query string: https only (in s3:// keys and hf:// patterns `?` is a glob character, and
# neither scheme has a query). A presigned URL's signature lives there.
QUERY_PATTERN = r"^https?://[^?]*[?]"
# Environment variables whose names say they hold a secret. A literal value of one is refused.
# Whole words between underscores, so TOKENIZERS_PARALLELISM or MAX_TOKENS stay literal values.
SECRET_ENV_NAME_PATTERN = r"(?i)(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY)(_|$)"

URI_CREDENTIAL_MESSAGE = (
    "a source or destination URI must not carry credentials (user:password@ or a presigned URL's query string): the spec is "
    "stored and shown to every reader of the pipeline. Give them to pods as Secret references instead: "
    "`env[].valueFrom.secretKeyRef` or `envFrom[].secretRef` (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://, "
    "HF_TOKEN for hf://)"
)
ENV_SECRET_MESSAGE = (
    "a variable named like a secret must not have a literal `value` (it would be stored in the pipeline, its "
    "Jobs and ConfigMaps): use `valueFrom.secretKeyRef`, or `envFrom[].secretRef`"
)


def uri_credential_problem(uri: str) -> str | None:
    """The message when `uri` carries user-info or a query string; None when it is clean."""
    if re.search(USERINFO_PATTERN, uri) or re.search(QUERY_PATTERN, uri):
        return URI_CREDENTIAL_MESSAGE
    return None


def env_secret_problem(name: str, value: str | None) -> str | None:
    """The message when a variable named like a secret is given a literal value."""
    if value is not None and re.search(SECRET_ENV_NAME_PATTERN, name):
        return f"env {name}: {ENV_SECRET_MESSAGE}"
    return None


def _quoted(pattern: str) -> str:
    return "'" + pattern.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cel_no_uri_credential(field: str, scheme: str = "") -> dict[str, str]:
    """The CRD rule refusing credentials in the string field `field` (optional) of the node.
    With `scheme`, a value without `://` is read as `<scheme>://<value>` (`model.hubId`)."""
    f = f"self.{field}"
    uri = f"({f}.contains('://') ? {f} : '{scheme}://' + {f})" if scheme else f
    return {
        "rule": f"!has({f}) || !({uri}.matches({_quoted(USERINFO_PATTERN)}) || {uri}.matches({_quoted(QUERY_PATTERN)}))",
        "message": URI_CREDENTIAL_MESSAGE,
        "fieldPath": f".{field}",
    }


CEL_NO_SECRET_ENV_VALUE = {
    "rule": f"!has(self.value) || !self.name.matches({_quoted(SECRET_ENV_NAME_PATTERN)})",
    "message": ENV_SECRET_MESSAGE,
    "fieldPath": ".value",
}
