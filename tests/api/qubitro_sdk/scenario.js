"use strict";
// Qubitro's Node.js SDK (client/, unchanged) driven against the service, the way its users
// call it. Usage: node scenario.js '<input JSON>'; prints one JSON object of what every call
// gave: {"value": …} or {"error": {type, status, message}} (the SDK rejects with its `Err`,
// made of the error body's `status` and `message`).
//
// Input: api_url, api_key, wrong_key, fleet_project_id, device_id (a device of that project to
// read and delete), other_device_id (another one, left alone), unknown_project_id, and
// project_body, device_body: the bodies of docs.qubitro.com's create pages, sent with fetch
// as those pages' own samples do (the SDK has no create).

const Module = require("node:module");
const path = require("node:path");

const SDK = path.join(__dirname, "client");
const TRANSPORT = path.join(__dirname, "transport.js");

// The SDK's `require("axios")` gets the transport; nothing else in the SDK is touched.
const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function (request, parent, ...rest) {
  if (request === "axios" && parent?.filename?.startsWith(SDK + path.sep)) {
    return TRANSPORT;
  }
  return resolveFilename.call(this, request, parent, ...rest);
};

const sdk = require(SDK);
const axios = require(TRANSPORT);

async function outcome(call) {
  try {
    return { value: await call() };
  } catch (error) {
    return {
      error: { type: error?.constructor?.name, status: error?.status, message: error?.message },
    };
  }
}

async function docsPost(input, route, requestBody) {
  const result = await fetch(`${input.api_url}${route}`, {
    headers: {
      "Content-Type": "application/json",
      Authorization: `Bearer ${input.api_key}`,
    },
    method: "POST",
    body: JSON.stringify(requestBody),
  });
  return { status: result.status, body: await result.json() };
}

async function main(input) {
  const fleet = input.fleet_project_id;
  const out = { transport: axios.qubitroTransport };
  sdk.init({ apikey: input.api_key });

  out.created_project = await docsPost(input, "/v2/projects", input.project_body);
  const projectId = out.created_project.body.data?.id;
  out.created_device = await docsPost(input, `/v2/projects/${projectId}/devices`, input.device_body);

  out.projects = await outcome(() => sdk.getProjects());
  out.project = await outcome(() => sdk.getProjectById(projectId));
  out.devices = await outcome(() => sdk.getDevices(fleet));
  out.device = await outcome(() => sdk.getDeviceById(fleet, input.device_id));

  // The SDK deletes through its classes, built from what it read, by the names it declares.
  const d = out.device.value;
  out.device_delete = await outcome(() =>
    new sdk.Device(d.id, d.name, d.description, d.brand, d.model, d.avatar, d.lastSeen, d.projectId).delete(),
  );
  out.device_after_delete = await outcome(() => sdk.getDeviceById(fleet, input.device_id));
  out.devices_after_delete = await outcome(async () => (await sdk.getDevices(fleet)).map((each) => each.id));

  const p = out.project.value;
  out.project_delete = await outcome(() => new sdk.Project(p.id, p.name, p.description, p.created_at).delete());
  out.project_after_delete = await outcome(() => sdk.getProjectById(projectId));
  out.projects_after_delete = await outcome(async () => (await sdk.getProjects()).map((each) => each.id));

  out.unknown_project_devices = await outcome(() => sdk.getDevices(input.unknown_project_id));
  out.device_data = await outcome(() => sdk.getData(fleet, input.other_device_id, 1, 10));

  sdk.init({ apikey: input.wrong_key });
  out.wrong_key = await outcome(() => sdk.getProjects());
  sdk.init({ apikey: "" });
  out.no_key = await outcome(() => sdk.getProjects());
  return out;
}

let finished = false;
// The SDK never settles its promise when a request fails without an answer (it reads
// `error.response.data` of an undefined response): say so instead of exiting silently.
process.on("beforeExit", () => {
  if (!finished) {
    process.stderr.write("an SDK call never settled (a request failed without an answer?)\n");
    process.exitCode = 1;
    finished = true;
  }
});

main(JSON.parse(process.argv[2])).then(
  (out) => {
    finished = true;
    process.stdout.write(JSON.stringify(out));
  },
  (error) => {
    finished = true;
    process.stderr.write(`${error?.stack ?? error}\n`);
    process.exitCode = 1;
  },
);
