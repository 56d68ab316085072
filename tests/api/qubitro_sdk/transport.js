"use strict";
// What `require("axios")` gives the vendored @qubitro/client: the SDK's requests, sent to
// QUBITRO_API_URL instead of its hard-coded https://api.qubitro.com.
//
// With QUBITRO_SDK_AXIOS naming a directory where axios is installed (`npm install axios
// --prefix DIR`: the SDK's own dependency, not vendored here), that axios is used, with a
// request interceptor that rewrites the base URL. Without it, a stand-in for the part of axios 1.x the SDK uses: `axios.default.get` and
// `.delete` with `{headers, params}`, answering `{data, status, headers}` with `data` parsed
// from JSON, and rejecting a status outside 2xx with an error carrying that `response`, as
// axios does (a failure without an answer has no `response`).

const http = require("node:http");
const https = require("node:https");

const QUBITRO = "https://api.qubitro.com";

function redirected(url) {
  const base = process.env.QUBITRO_API_URL;
  if (!base || !url.startsWith(`${QUBITRO}/`)) {
    return url;
  }
  return base.replace(/\/+$/, "") + url.slice(QUBITRO.length);
}

function withParams(url, params) {
  const where = new URL(url);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null) {
      where.searchParams.append(name, value instanceof Date ? value.toISOString() : String(value));
    }
  }
  return where;
}

function failure(message, code, config, response) {
  const error = new Error(message);
  error.name = "AxiosError";
  error.isAxiosError = true;
  error.code = code;
  error.config = config;
  if (response !== undefined) {
    error.response = response;
  }
  return error;
}

function request(method, url, config = {}) {
  const where = withParams(redirected(url), config.params);
  // The headers axios 1.x sends by default, then the caller's (the SDK's Authorization).
  const headers = {
    Accept: "application/json, text/plain, */*",
    "User-Agent": "axios/1.4.0",
    ...config.headers,
  };
  let body;
  if (config.data !== undefined) {
    body = JSON.stringify(config.data);
    headers["Content-Type"] = "application/json";
  }
  const transport = where.protocol === "https:" ? https : http;
  return new Promise((resolve, reject) => {
    const sent = transport.request(where, { method, headers }, (answer) => {
      const chunks = [];
      answer.on("data", (chunk) => chunks.push(chunk));
      answer.on("error", (error) => reject(failure(error.message, error.code, config)));
      answer.on("end", () => {
        if (!answer.complete) {
          reject(failure("stream has been aborted", "ERR_BAD_RESPONSE", config));
          return;
        }
        const text = Buffer.concat(chunks).toString("utf8");
        let data = text;
        try {
          data = text ? JSON.parse(text) : text;
        } catch {
          // axios's default (transitional.silentJSONParsing): keep the text as it came.
        }
        const response = {
          data,
          status: answer.statusCode,
          statusText: answer.statusMessage,
          headers: answer.headers,
          config,
        };
        if (answer.statusCode >= 200 && answer.statusCode < 300) {
          resolve(response);
          return;
        }
        const code = answer.statusCode < 500 ? "ERR_BAD_REQUEST" : "ERR_BAD_RESPONSE";
        reject(failure(`Request failed with status code ${answer.statusCode}`, code, config, response));
      });
    });
    sent.on("error", (error) => reject(failure(error.message, error.code, config)));
    if (body !== undefined) {
      sent.write(body);
    }
    sent.end();
  });
}

function standIn() {
  const axios = {
    qubitroTransport: "stand-in for axios 1.x",
    get: (url, config) => request("GET", url, config),
    delete: (url, config) => request("DELETE", url, config),
    post: (url, data, config) => request("POST", url, { ...config, data }),
  };
  axios.default = axios;
  return axios;
}

function installed(directory) {
  const axios = require(require.resolve("axios", { paths: [directory] }));
  axios.interceptors.request.use((config) => ({ ...config, url: redirected(config.url) }));
  axios.qubitroTransport = `axios ${axios.VERSION}`;
  return axios;
}

module.exports = process.env.QUBITRO_SDK_AXIOS
  ? installed(process.env.QUBITRO_SDK_AXIOS)
  : standIn();
