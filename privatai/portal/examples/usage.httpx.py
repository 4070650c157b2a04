import os

import httpx

response = httpx.get(
    "__BASE_URL__/usage",
    params={"by_model": "true"},
    headers={"Authorization": f"Bearer {os.environ['PRIVATAI_API_KEY']}"},
)
response.raise_for_status()
print(response.json())
