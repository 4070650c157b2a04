import httpx

print(httpx.get("__ORIGIN__/healthz").json())
print(httpx.get("__ORIGIN__/readyz").json())
