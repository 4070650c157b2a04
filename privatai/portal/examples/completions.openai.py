import os

from openai import OpenAI

client = OpenAI(base_url="__BASE_URL__", api_key=os.environ["PRIVATAI_API_KEY"])

completion = client.completions.create(
    model="__MODEL__",
    prompt="The three largest cities in Germany are",
    max_tokens=30,
)
print(completion.choices[0].text)
print(f"[{completion.usage.total_tokens} tokens]")
