"""Render, lint and validate mfoundry's Kubernetes manifests with the real engines.

Run by tests/it/deploy (the Rust tests) with the Python of MFOUNDRY_DEPLOY_PYTHON, which has
helm-python-sdk (Helm's own Go engine, no helm binary) and kubernetes-validate (the
Kubernetes OpenAPI schemas of each release). Prints one JSON document on stdout.

  kube.py helm CHART VALUES RELEASE NAMESPACE KUBE_VERSION
      -> {"objects": [...], "notes": str, "lint": {...}, "invalid": [str]}
      or {"error": str} when Helm refuses the values (schema, or a template's `fail`).
      VALUES is a YAML file, or "-" for the chart's defaults.
  kube.py validate KUBE_VERSION < stream.yaml
      -> {"invalid": [str], "validated": int}
  kube.py schema-error CHART VALUES
      -> {"error": str or null}  (the chart's values.schema.json on VALUES)
"""

import json
import sys

import yaml


def validate(objects, version):
    import kubernetes_validate

    invalid = []
    for item in objects:
        where = "%s/%s" % (item.get("kind"), item.get("metadata", {}).get("name"))
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            invalid.append("%s: %s" % (where, error.message))
        except Exception as error:  # a kind without a schema is a finding too
            invalid.append("%s: %s" % (where, error))
    return invalid


def values_of(path):
    if path == "-":
        return None
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def helm(chart, values_path, release, namespace, version):
    import helm_python

    values = values_of(values_path)
    with helm_python.Chart.load(chart) as loaded:
        try:
            manifests = loaded.render(values, name=release, namespace=namespace, is_install=True)
        except helm_python.HelmError as error:
            return {"error": str(error)}
    objects, notes = [], ""
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            notes = manifests[path]
            continue
        for item in yaml.safe_load_all(manifests[path]):
            if item:
                item.setdefault("metadata", {}).setdefault("annotations", {})
                item["metadata"]["annotations"].setdefault("mfoundry.test/template", path)
                objects.append(item)
    lint = helm_python.lint(chart, values, strict=True, namespace=namespace, kube_version="v" + version)
    # The template annotation is the test's own: strip it before validating.
    plain = json.loads(json.dumps(objects))
    for item in plain:
        annotations = item["metadata"]["annotations"]
        annotations.pop("mfoundry.test/template", None)
        if not annotations:
            del item["metadata"]["annotations"]
    return {"objects": objects, "notes": notes, "lint": lint, "invalid": validate(plain, version)}


def schema_error(chart, values_path):
    import helm_python

    with helm_python.Chart.load(chart) as loaded:
        try:
            loaded.validate_schema(values_of(values_path))
        except helm_python.HelmError as error:
            return {"error": str(error)}
    return {"error": None}


def main(argv):
    command = argv[1]
    if command == "helm":
        result = helm(*argv[2:7])
    elif command == "validate":
        objects = [item for item in yaml.safe_load_all(sys.stdin) if item]
        result = {"invalid": validate(objects, argv[2]), "validated": len(objects)}
    elif command == "schema-error":
        result = schema_error(argv[2], argv[3])
    else:
        raise SystemExit("unknown command %r" % command)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
