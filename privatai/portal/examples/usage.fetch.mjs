const response = await fetch("__BASE_URL__/usage?by_model=true", {
  headers: { "Authorization": `Bearer ${process.env.PRIVATAI_API_KEY}` },
});
if (!response.ok) throw new Error((await response.json()).error.message);
console.log(await response.json());
