const spec = await (await fetch("__BASE_URL__/openapi.json")).json();
console.log(spec.info.title, spec.info.version, "OpenAPI", spec.openapi);
for (const [path, operations] of Object.entries(spec.paths)) {
  console.log(Object.keys(operations).map((method) => method.toUpperCase()).join(", "), path);
}
