import os

from openai import OpenAI

client = OpenAI(base_url="__BASE_URL__", api_key=os.environ["PRIVATAI_API_KEY"])

stream = client.chat.completions.create(
    model="__MODEL__",
    messages=[{"role": "user", "content": "Hello, how are you?"}],
    max_tokens=100,
    stream=True,
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    if chunk.usage:
        print(f"\n[{chunk.usage.total_tokens} tokens]")
