import httpx

spec = httpx.get("__BASE_URL__/openapi.json").json()
print(spec["info"]["title"], spec["info"]["version"], "OpenAPI", spec["openapi"])
for path, operations in spec["paths"].items():
    print(", ".join(method.upper() for method in operations), path)
