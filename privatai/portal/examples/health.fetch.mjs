console.log(await (await fetch("__ORIGIN__/healthz")).json());
console.log(await (await fetch("__ORIGIN__/readyz")).json());
