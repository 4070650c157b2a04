import os

from openai import OpenAI

client = OpenAI(base_url="__BASE_URL__", api_key=os.environ["PRIVATAI_API_KEY"])

result = client.embeddings.create(
    model="__MODEL__",
    input=["Privacy by design", "Hosted in Germany"],
)
for item in result.data:
    print(f"{len(item.embedding)} dimensions: {item.embedding[:3]}")
print(f"[{result.usage.total_tokens} tokens]")
