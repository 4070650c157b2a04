import OpenAI from "openai";

const client = new OpenAI({ baseURL: "__BASE_URL__", apiKey: process.env.PRIVATAI_API_KEY });

for await (const model of client.models.list()) {
  console.log(model.id);
}
console.log(await client.models.retrieve("__MODEL__"));
