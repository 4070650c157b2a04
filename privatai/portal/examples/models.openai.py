import os

from openai import OpenAI

client = OpenAI(base_url="__BASE_URL__", api_key=os.environ["PRIVATAI_API_KEY"])

for model in client.models.list():
    print(model.id)
print(client.models.retrieve("__MODEL__"))
