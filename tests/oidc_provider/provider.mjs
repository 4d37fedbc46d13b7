// A real OpenID Connect provider for Moorage's tests: panva's certified `oidc-provider`, one confidential client,
// a fixed set of accounts, its own login page (no consent page), started by tests/oidc_server.py.
//
// Options (a command-line option wins over its environment variable):
//   --port N               OIDC_PORT            port to listen on (required)
//   --host H               OIDC_HOST            address to listen on, default 127.0.0.1
//   --issuer URL           OIDC_ISSUER          default http://HOST:PORT (plain http is accepted by oidc-provider)
//   --client JSON          OIDC_CLIENT          {"client_id", "client_secret", "redirect_uris": [...],
//                                               "post_logout_redirect_uris": [...], "token_endpoint_auth_method"}
//                                               a redirect URI may hold `*` in place of its port: any port matches
//   --accounts JSON        OIDC_ACCOUNTS        {"alice": {"password", "email", "groups": [...], "name",
//                                               "email_verified", "sub"}, ...}; `sub` defaults to the user name
//   --jwks-file PATH       OIDC_JWKS_FILE       private JWK set (JSON) to sign with, first key first; without it a
//                                               fresh RSA key (random kid) is made at every start
//   --id-token-ttl SECS    OIDC_ID_TOKEN_TTL    lifetime of ID tokens and access tokens, default 3600
//   --sso                  OIDC_SSO=1           remember the sign-in (a second authorization skips the login page);
//                                               by default every authorization request shows the login page
//
// Prints `READY <issuer>` on stdout once listening; logs requests and errors to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const SCOPES = ['openid', 'profile', 'email', 'groups'];
const BODY_LIMIT = 64 * 1024;
const SESSION_COOKIE_NAME = 'op_session';

function fail(message) {
  process.stderr.write(`oidc provider: ${message}\n`);
  process.exit(2);
}

function options() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      issuer: { type: 'string' },
      client: { type: 'string' },
      accounts: { type: 'string' },
      'jwks-file': { type: 'string' },
      'id-token-ttl': { type: 'string' },
      sso: { type: 'boolean' },
    },
    strict: true,
  });
  const env = process.env;
  const port = Number(values.port ?? env.OIDC_PORT);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('--port (or OIDC_PORT) must be a port number');
  const host = values.host ?? env.OIDC_HOST ?? '127.0.0.1';
  const ttl = Number(values['id-token-ttl'] ?? env.OIDC_ID_TOKEN_TTL ?? 3600);
  if (!Number.isInteger(ttl) || ttl <= 0) fail('--id-token-ttl (or OIDC_ID_TOKEN_TTL) must be a positive integer');
  const json = (name, text) => {
    if (text === undefined) fail(`--${name} (or OIDC_${name.toUpperCase()}) is required`);
    try {
      return JSON.parse(text);
    } catch (error) {
      return fail(`--${name} is not JSON: ${error.message}`);
    }
  };
  return {
    port,
    host,
    issuer: values.issuer ?? env.OIDC_ISSUER ?? `http://${host}:${port}`,
    client: json('client', values.client ?? env.OIDC_CLIENT),
    accounts: json('accounts', values.accounts ?? env.OIDC_ACCOUNTS),
    jwksFile: values['jwks-file'] ?? env.OIDC_JWKS_FILE,
    ttl,
    sso: values.sso ?? ['1', 'true', 'yes'].includes((env.OIDC_SSO ?? '').toLowerCase()),
  };
}

function signingKeys(jwksFile) {
  if (jwksFile) {
    const { keys } = JSON.parse(fs.readFileSync(jwksFile, 'utf8'));
    if (!Array.isArray(keys) || !keys.length) fail(`${jwksFile} holds no keys`);
    return keys;
  }
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return [{ ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' }];
}

// `*` in place of a port: redirect URIs are only known to the test once the relying party has its port.
const PORT_WILDCARD = /^(https?:\/\/[^/?#@]+):\*(?=[/?#]|$)/;
const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function uriList(uris, what) {
  if (uris === undefined) return { exact: [], patterns: [] };
  if (!Array.isArray(uris) || !uris.every((uri) => typeof uri === 'string')) fail(`${what} must be a list of URIs`);
  const exact = [];
  const patterns = [];
  for (const uri of uris) {
    if (!uri.includes('*')) {
      exact.push(uri);
    } else if (PORT_WILDCARD.test(uri) && !uri.replace(PORT_WILDCARD, '').includes('*')) {
      const [, origin] = uri.match(PORT_WILDCARD);
      patterns.push(new RegExp(`^${escapeRegExp(origin)}:\\d{1,5}${escapeRegExp(uri.replace(PORT_WILDCARD, ''))}$`));
      exact.push(uri.replace(PORT_WILDCARD, '$1:1')); // the registered stand-in: never a real redirect target
    } else {
      fail(`${what}: a * may only stand for the port (${uri})`);
    }
  }
  return { exact, patterns };
}

const html = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  // Self-contained: no external font, script or icon (the browser tests run offline and check the console).
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>${html(title)} - test OpenID provider</title>
<style>
body { font-family: sans-serif; max-width: 22rem; margin: 3rem auto; padding: 0 1rem; }
label, input, button { display: block; width: 100%; box-sizing: border-box; }
input { margin: 0.25rem 0 1rem; padding: 0.5rem; }
button { padding: 0.6rem; }
#error { color: #b00020; }
</style>
</head>
<body>
<main>
<h1>${html(title)}</h1>
${body}
</main>
</body>
</html>
`;
}

function loginPage(uid, clientId, { login = '', error = false } = {}) {
  return page('Sign in', `<p id="client">to continue to <strong>${html(clientId)}</strong></p>
${error ? '<p id="error" role="alert">Invalid login or password.</p>\n' : ''}<form id="login-form" method="post" action="/interaction/${html(uid)}/login">
<label for="login">Login</label>
<input id="login" name="login" type="text" value="${html(login)}" autocomplete="username" required${login ? '' : ' autofocus'}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required${login ? ' autofocus' : ''}>
<button id="submit" type="submit">Sign in</button>
</form>
<p><a id="cancel" href="/interaction/${html(uid)}/abort">Cancel</a></p>`);
}

function passwordMatches(given, expected) {
  const hash = (text) => crypto.createHash('sha256').update(String(text)).digest();
  return crypto.timingSafeEqual(hash(given), hash(expected)) && given === expected;
}

const config = options();
const { client } = config;
for (const field of ['client_id', 'client_secret']) {
  if (typeof client[field] !== 'string' || !client[field]) fail(`the client needs a ${field}`);
}
const redirects = uriList(client.redirect_uris, 'redirect_uris');
const postLogout = uriList(client.post_logout_redirect_uris, 'post_logout_redirect_uris');
if (!redirects.exact.length) fail('the client needs at least one redirect URI');

const accountsBySub = new Map();
const subByLogin = new Map();
for (const [login, account] of Object.entries(config.accounts)) {
  if (typeof account?.password !== 'string') fail(`account ${login} needs a password`);
  const sub = account.sub ?? login;
  accountsBySub.set(sub, { login, ...account, sub });
  subByLogin.set(login, sub);
}

const provider = new Provider(config.issuer, {
  clients: [{
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: redirects.exact,
    ...(postLogout.exact.length ? { post_logout_redirect_uris: postLogout.exact } : {}),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    // client_secret_post is accepted too: oidc-provider lets a client_secret_basic client use either
    token_endpoint_auth_method: client.token_endpoint_auth_method ?? 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: signingKeys(config.jwksFile) },
  responseTypes: ['code'],
  scopes: SCOPES,
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // The ID token carries every claim its scopes grant, not only `sub` (userinfo has them too).
  conformIdTokenClaims: false,
  pkce: { required: () => true }, // S256 is the only method oidc-provider 9 supports
  allowOmittingSingleRegisteredRedirectUri: false,
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource(ctx, form) {
        ctx.body = page('Sign out', `${form}
<button id="logout" type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>
<button id="stay" type="submit" form="op.logoutForm">Stay signed in</button>`);
      },
      postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
      },
    },
  },
  interactions: {
    url(ctx, interaction) {
      // Without --sso the request came without a session (forgetSession): save the new one, so that its cookie
      // replaces the previous user's before the sign-in resumes the request.
      if (!config.sso) ctx.oidc.session.touched = true;
      return `/interaction/${interaction.uid}`;
    },
  },
  // No consent page: the one client is first-party, it gets every scope and claim it asks for.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    const existing = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
    if (existing) return existing;
    if (!ctx.oidc.session.accountId) return undefined;
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(SCOPES.join(' '));
    grant.addOIDCClaims([...ctx.oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },
  async findAccount(ctx, sub) {
    const account = accountsBySub.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          preferred_username: account.login,
          ...(account.name === undefined ? {} : { name: account.name }),
          ...(account.email === undefined ? {} : { email: account.email, email_verified: account.email_verified ?? true }),
          groups: account.groups ?? [],
        };
      },
    };
  },
  ttl: {
    AccessToken: config.ttl,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: config.ttl,
    Interaction: 600,
    Session: 3600,
  },
  cookies: {
    // Prefixed: the relying party under test runs on the same host (cookies do not tell ports apart).
    names: { session: SESSION_COOKIE_NAME, interaction: 'op_interaction', resume: 'op_interaction_resume' },
    keys: [crypto.randomBytes(32).toString('base64url')],
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', `<p id="error">${html(out.error)}</p>
<p id="error_description">${html(out.error_description ?? '')}</p>`);
  },
});

for (const [list, method] of [[redirects, 'redirectUriAllowed'], [postLogout, 'postLogoutRedirectUriAllowed']]) {
  const original = provider.Client.prototype[method];
  provider.Client.prototype[method] = function allowed(value) {
    return original.call(this, value) || list.patterns.some((pattern) => pattern.test(value));
  };
}

for (const event of ['server_error', 'authorization.error', 'grant.error', 'end_session.error', 'userinfo.error',
  'discovery.error', 'jwks.error']) {
  provider.on(event, (ctx, error) => {
    const cause = error.cause?.message ? `, caused by: ${error.cause.message}` : '';
    const detail = error.error_description ? ` (${error.error_description}${cause})` : cause;
    process.stderr.write(`${event}: ${error.message}${detail}${event === 'server_error' ? `\n${error.stack}` : ''}\n`);
  });
}

async function readForm(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body);
}

// The interaction routes: the login page (GET), its form (POST .../login), cancel (GET .../abort).
async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (error) {
    if (!(error instanceof errors.SessionNotFound)) throw error;
    send(res, 400, page('Error', `<p id="error">${html(error.message)}</p>
<p id="error_description">${html(error.error_description ?? '')}</p>`));
    return;
  }
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p id="error">This sign-in page has expired: start again.</p>'));
    return;
  }
  const { prompt, params } = details;
  if (action === 'abort' && req.method === 'GET') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    // loadExistingGrant grants everything, so this is not expected; approve anyway, without a page.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }
  if (prompt.name !== 'login') {
    send(res, 501, page('Error', `<p id="error">unexpected prompt ${html(prompt.name)}</p>`));
    return;
  }
  if (action === undefined && req.method === 'GET') {
    send(res, 200, loginPage(uid, params.client_id, { login: params.login_hint ?? '' }));
    return;
  }
  if (action === 'login' && req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login') ?? '';
    const sub = subByLogin.get(login);
    const account = sub === undefined ? undefined : accountsBySub.get(sub);
    if (!account || !passwordMatches(form.get('password') ?? '', account.password)) {
      process.stderr.write(`login refused for ${JSON.stringify(login)}\n`);
      send(res, 200, loginPage(uid, params.client_id, { login, error: true }));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: sub } }, { mergeWithLastSubmission: false });
    return;
  }
  send(res, 405, page('Error', '<p id="error">method not allowed</p>'));
}

const routes = { authorization: '/auth' }; // oidc-provider's default route

// Without --sso an authorization request starts without the provider's session: the login page every time, and no
// "sign out the previous user first" detour (oidc-provider's auto-submitted form) when another user signs in.
const SESSION_COOKIE = new RegExp(`^${SESSION_COOKIE_NAME}(\\.sig)?$`);
function forgetSession(req) {
  if (!req.headers.cookie) return;
  const kept = req.headers.cookie.split(';').filter((pair) => !SESSION_COOKIE.test(pair.split('=')[0].trim()));
  if (kept.length) req.headers.cookie = kept.join(';');
  else delete req.headers.cookie;
}

const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?$/;
const callback = provider.callback();

const server = http.createServer((req, res) => {
  const started = Date.now();
  res.on('finish', () => {
    process.stderr.write(`${req.method} ${req.url.split('?')[0]} ${res.statusCode} ${Date.now() - started}ms\n`);
  });
  const path = new URL(req.url, config.issuer).pathname;
  if (path === '/favicon.ico') {
    res.writeHead(204).end();
    return;
  }
  if (!config.sso && path === routes.authorization) forgetSession(req);
  const match = path.match(INTERACTION);
  if (!match) {
    callback(req, res);
    return;
  }
  interaction(req, res, match[1], match[2]).catch((error) => {
    process.stderr.write(`interaction error: ${error.stack}\n`);
    if (!res.headersSent) send(res, 500, page('Error', `<p id="error">${html(error.message)}</p>`));
    else res.end();
  });
});

server.on('error', (error) => {
  process.stderr.write(`oidc provider: cannot listen on ${config.host}:${config.port}: ${error.code ?? error.message}\n`);
  process.exit(error.code === 'EADDRINUSE' ? 98 : 1);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}

server.listen(config.port, config.host, () => {
  process.stdout.write(`READY ${config.issuer}\n`);
});
