"""The part of Kustomize (v5) that deploy/kubernetes uses, so its manifests render without
kubectl (CI has none). test_kubernetes.py checks that it renders exactly what
`kubectl kustomize` does whenever a kubectl with Kustomize v5 is installed.

Supported, and nothing else (anything else is an error, never silently ignored):
- `resources`: YAML files (several documents each) and directories holding a kustomization;
- `components`: directories holding a `kind: Component`, applied in order to what the
  kustomization has accumulated so far;
- `namespace`, `labels` (metadata.labels only: `includeSelectors` and `includeTemplates` unset
  or false), `images` (`name`, `newName`, `newTag`, `digest`);
- `configMapGenerator` with `files` and `literals`, a content hash suffix as Kustomize computes
  it (or none with `options.disableNameSuffixHash`), and the ConfigMap's name updated where pod
  specs refer to it (volumes, envFrom, env valueFrom);
- `patches` (`path` or `patch`, optional `target` by group, version, kind, name, namespace):
  strategic-merge patches (lists of containers, initContainers, volumes, env merged by name,
  volumeMounts by mountPath; other lists replaced; `null` deletes a key) and JSON 6902 patches
  with `add`, `remove` and `replace`.

    python3 tests/kustomize_lite.py deploy/kubernetes/overlays/aws-irsa   # prints the YAML
"""

import copy
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED = {"apiVersion", "kind", "resources", "components", "namespace", "labels", "images",
             "configMapGenerator", "patches"}
# Strategic-merge keys of the lists the patches here touch (Kubernetes' own types only).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "volumes": "name", "env": "name", "volumeMounts": "mountPath"}
NATIVE_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io",
                 "rbac.authorization.k8s.io"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}


class KustomizeError(Exception):
    pass


def render(path):
    """The objects `kustomize build path` outputs, in Kustomize's order."""
    objs, generated = _build(Path(path), [], {}, component=False)
    _fix_config_map_refs(objs, generated)
    return sorted(objs, key=_legacy_order)


def render_yaml(path):
    return yaml.safe_dump_all(render(path), sort_keys=True)


def _load_kustomization(directory, component):
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            k = yaml.safe_load((directory / name).read_text()) or {}
            break
    else:
        raise KustomizeError(f"{directory}: no kustomization file")
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}: kustomize_lite does not support {sorted(unknown)}")
    want = "Component" if component else "Kustomization"
    if k.get("kind", "Kustomization") != want:
        raise KustomizeError(f"{directory}: kind {k.get('kind')!r}, expected {want}")
    return k


def _load_docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _build(directory, accumulated, generated, component):
    k = _load_kustomization(directory, component)
    objs = list(accumulated)
    for res in k.get("resources") or []:
        p = directory / res
        if p.is_dir():
            sub, sub_generated = _build(p, [], {}, component=False)
            objs += sub
            generated.update(sub_generated)
        elif p.is_file():
            objs += _load_docs(p)
        else:
            raise KustomizeError(f"{directory}: resource {res} not found")
    for comp in k.get("components") or []:
        objs, generated = _build(directory / comp, objs, generated, component=True)
    for gen in k.get("configMapGenerator") or []:
        cm, hashed = _config_map(directory, gen)
        objs.append(cm)
        generated[gen["name"]] = hashed
    _check_unique(directory, objs)
    # Kustomize's order of the built-in transformers: patches, namespace, labels, images.
    for patch in k.get("patches") or []:
        _apply_patch(directory, patch, objs)
    if "namespace" in k:
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = k["namespace"]
    for spec in k.get("labels") or []:
        if spec.get("includeSelectors") or spec.get("includeTemplates"):
            raise KustomizeError(f"{directory}: labels with includeSelectors/includeTemplates")
        for o in objs:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])
    for image in k.get("images") or []:
        for o in objs:
            for c in _containers(o):
                c["image"] = _new_image(c.get("image", ""), image)
    return objs, generated


def _check_unique(directory, objs):
    seen = set()
    for o in objs:
        key = (o.get("apiVersion"), o.get("kind"), o["metadata"].get("namespace"),
               o["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{directory}: {key} defined twice")
        seen.add(key)


def _config_map(directory, gen):
    if gen.get("behavior", "create") != "create":
        raise KustomizeError(f"{directory}: configMapGenerator behavior {gen['behavior']}")
    unknown = set(gen) - {"name", "files", "literals", "options", "behavior"}
    if unknown or set(gen.get("options") or {}) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"{directory}: configMapGenerator fields {sorted(unknown)}")
    data = {}
    for f in gen.get("files") or []:
        key, _, rel = f.rpartition("=") if "=" in f else (Path(f).name, "", f)
        data[key] = (directory / rel).read_text()
    for lit in gen.get("literals") or []:
        key, value = lit.split("=", 1)
        data[key] = value
    name = gen["name"]
    hashed = name
    if not (gen.get("options") or {}).get("disableNameSuffixHash"):
        hashed = f"{name}-{config_map_hash(name, data)}"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": hashed}, "data": data}
    return cm, hashed


def config_map_hash(name, data):
    """Kustomize's name suffix (api/hasher): SHA-256 of the ConfigMap's kind, name and data
    as Go's json.Marshal writes them, first 10 hex digits with some letters swapped. The name
    hashed is always "": Kustomize looks it up as one field called "metadata/name"."""
    del name
    text = json.dumps({"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _pod_specs(o):
    spec = o.get("spec") or {}
    if o["kind"] == "Pod":
        yield spec
    elif o["kind"] == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec.get("template", {}).get("spec", {})


def _containers(o):
    for pod in _pod_specs(o):
        for field in ("initContainers", "containers"):
            yield from pod.get(field) or []


def _new_image(current, image):
    m = re.fullmatch(r"(?P<name>[^@]+?)(?::(?P<tag>[^:/@]+))?(?:@(?P<digest>.+))?", current)
    if not m or m["name"] != image["name"]:
        return current
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizeError(f"images: {sorted(unknown)}")
    name = image.get("newName", m["name"])
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return name + (f":{m['tag']}" if m["tag"] else "") + (f"@{m['digest']}" if m["digest"] else "")


def _fix_config_map_refs(objs, generated):
    for o in objs:
        for pod in _pod_specs(o):
            for v in pod.get("volumes") or []:
                if "configMap" in v and v["configMap"].get("name") in generated:
                    v["configMap"]["name"] = generated[v["configMap"]["name"]]
            for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
                for e in c.get("envFrom") or []:
                    ref = e.get("configMapRef") or {}
                    if ref.get("name") in generated:
                        ref["name"] = generated[ref["name"]]
                for e in c.get("env") or []:
                    ref = (e.get("valueFrom") or {}).get("configMapKeyRef") or {}
                    if ref.get("name") in generated:
                        ref["name"] = generated[ref["name"]]


def _group_version(o):
    api = o.get("apiVersion", "")
    return tuple(api.split("/", 1)) if "/" in api else ("", api)


def _matches(o, target):
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise KustomizeError(f"patch target selectors {sorted(unknown)} are not supported")
    group, version = _group_version(o)
    meta = o["metadata"]
    return all([
        "group" not in target or target["group"] == group,
        "version" not in target or target["version"] == version,
        "kind" not in target or target["kind"] == o["kind"],
        # Kustomize reads name and namespace as anchored regular expressions.
        "name" not in target or re.fullmatch(target["name"], meta["name"]) is not None,
        "namespace" not in target
        or re.fullmatch(target["namespace"], meta.get("namespace", "")) is not None,
    ])


def _apply_patch(directory, entry, objs):
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown or ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{directory}: patch entry {entry}")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    target = entry.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):
        if target is None:
            raise KustomizeError(f"{directory}: a JSON 6902 patch needs a target")
        hits = [o for o in objs if _matches(o, target)]
        if not hits:
            raise KustomizeError(f"{directory}: patch target {target} matches nothing")
        for o in hits:
            for op in docs[0]:
                _json6902(o, op)
        return
    for patch in docs:
        if not isinstance(patch, dict):
            raise KustomizeError(f"{directory}: patch {entry} is neither SMP nor JSON 6902")
        if target is not None:
            hits = [o for o in objs if _matches(o, target)]
            patch = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
            patch["metadata"] = {k: v for k, v in (patch.get("metadata") or {}).items()
                                 if k not in ("name", "namespace")}
        else:
            sel = {"kind": patch["kind"], "name": re.escape(patch["metadata"]["name"])}
            if "namespace" in patch["metadata"]:
                sel["namespace"] = re.escape(patch["metadata"]["namespace"])
            group, version = _group_version(patch)
            sel.update(group=group, version=version)
            hits = [o for o in objs if _matches(o, sel)]
            if len(hits) != 1:
                raise KustomizeError(f"{directory}: patch for {sel} matches {len(hits)} objects")
        if not hits:
            raise KustomizeError(f"{directory}: patch target {target} matches nothing")
        for o in hits:
            native = _group_version(o)[0] in NATIVE_GROUPS
            merged = _smp(o, patch, native)
            o.clear()
            o.update(merged)


def _smp(base, patch, native):
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise KustomizeError(f"strategic-merge directive {key} is not supported")
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _smp(out[key], value, native)
        elif (isinstance(value, list) and native and key in MERGE_KEYS
              and isinstance(out.get(key), list)):
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key], native)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(base, patch, key, native):
    out = copy.deepcopy(base)
    for item in patch:
        if not isinstance(item, dict) or "$patch" in item:
            raise KustomizeError(f"list item {item!r} is not supported")
        for i, existing in enumerate(out):
            if existing.get(key) == item.get(key):
                out[i] = _smp(existing, item, native)
                break
        else:
            out.append(copy.deepcopy(item))
    return out


def _pointer(path):
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(obj, op):
    kind = op.get("op")
    if kind not in ("add", "remove", "replace"):
        raise KustomizeError(f"JSON 6902 op {kind!r} is not supported")
    *parents, last = _pointer(op["path"])
    node = obj
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        if kind == "add":
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif kind == "remove":
            del node[int(last)]
        else:
            node[int(last)] = copy.deepcopy(op["value"])
        return
    if kind in ("remove", "replace") and last not in node:
        raise KustomizeError(f"JSON 6902 {kind} of missing {op['path']}")
    if kind == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(op["value"])


# Kustomize's default ("legacy") output order: these kinds first in this order, then the
# rest by kind; within a kind by namespace and name.
_ORDER_FIRST = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
                "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
                "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service",
                "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim",
                "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget"]
_ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


def _legacy_order(o):
    kind = o["kind"]
    if kind in _ORDER_FIRST:
        rank = (0, _ORDER_FIRST.index(kind), "")
    elif kind in _ORDER_LAST:
        rank = (2, _ORDER_LAST.index(kind), "")
    else:
        rank = (1, 0, kind)
    meta = o["metadata"]
    return rank + (o.get("apiVersion", ""), meta.get("namespace", ""), meta["name"])


if __name__ == "__main__":
    sys.stdout.write(render_yaml(sys.argv[1]))
