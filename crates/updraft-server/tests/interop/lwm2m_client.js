// An LwM2M firmware-update device built on npm's lwm2m-node-lib 1.4.0 (its client), pointed at
// Updraft. Usage: node lwm2m_client.js HOST PORT ENDPOINT [RESULT] [vanish]
//
// It registers /3/0 and /5/0 (State 0, Update Result 0), listens on loopback only, and acts as a
// device would: a write of /5/0/1 (Package URI) starts an HTTP download (State 1), the image
// complete it says State 2; Execute /5/0/2 "installs" (State 3), then it reboots: de-registers
// and registers again with State 0 and Update Result RESULT (1, success, by default). Each step
// is printed as one JSON line; it runs until killed. With `vanish` it drops off halfway through
// its first HTTP download (de-registers), comes back (registers again) and resumes the download
// with `Range: bytes=N-` and `If-Match`.
'use strict';

const coap = require('coap');
// lwm2m-node-lib's CoAP server listens on all interfaces: keep it on loopback.
const createServer = coap.createServer;
coap.createServer = function (options) {
    const server = createServer.call(coap, options);
    const listen = server.listen.bind(server);
    server.listen = function (port, address, done) {
        if (typeof address === 'function') {
            return listen(port, '127.0.0.1', address);
        }
        return listen(port, address || '127.0.0.1', done);
    };
    return server;
};

const http = require('http');
const crypto = require('crypto');
const client = require('lwm2m-node-lib').client;

const [host, port, endpoint, resultArg, mode] = process.argv.slice(2);
let vanishOnce = mode === 'vanish';
const finalResult = resultArg || '1';

function say(event) {
    process.stdout.write(JSON.stringify(event) + '\n');
}

function fail(what, error) {
    say({ event: 'error', what: what, error: String(error) });
    process.exit(1);
}

client.init({
    client: {
        lifetime: '300',
        version: '1.0',
        logLevel: 'FATAL',
        observe: { period: 3000 },
        ipProtocol: 'udp4',
        serverProtocol: 'udp4',
        formats: [{ name: 'lightweightm2m/text', value: 1541 }],
        writeFormat: 'lightweightm2m/text'
    }
});

function set(resource, value) {
    return new Promise((resolve, reject) =>
        client.registry.setResource('/5/0', resource, value, (e) => (e ? reject(e) : resolve())));
}

function create(uri) {
    return new Promise((resolve, reject) =>
        client.registry.create(uri, (e) => (e && e.name !== 'DuplicatedObject' ? reject(e) : resolve())));
}

let device = null;

function downloaded(status, chunks) {
    const image = Buffer.concat(chunks);
    const sha256 = crypto.createHash('sha256').update(image).digest('hex');
    say({ event: 'downloaded', status: status, size: image.length, sha256: sha256 });
    set('3', '2').catch((e) => fail('state 2', e));
}

// A Package URI over HTTP, or CoAP (node-coap fetches the Block2 blocks).
function download(url) {
    say({ event: 'uri', url: url });
    set('3', '1').then(() => {
        const chunks = [];
        if (url.startsWith('coap://')) {
            const req = coap.request(url);
            req.on('response', (res) => {
                res.on('data', (c) => chunks.push(c));
                res.on('end', () => downloaded(res.code, chunks));
            });
            req.on('error', (e) => fail('download', e));
            req.end();
            return;
        }
        let dropped = false;
        const req = http.get(url, (res) => {
            const etag = res.headers.etag;
            let size = 0;
            res.on('data', (c) => {
                chunks.push(c);
                size += c.length;
                const total = Number(res.headers['content-length']);
                if (vanishOnce && size * 2 >= total) {
                    vanishOnce = false;
                    dropped = true;
                    req.destroy();
                    vanish(url, chunks, size, etag);
                }
            });
            res.on('end', () => { if (!dropped) downloaded(res.statusCode, chunks); });
        });
        req.on('error', (e) => { if (!dropped) fail('download', e); });
    }).catch((e) => fail('state 1', e));
}

// Gone (power lost halfway), back (a new registration), and on with the rest of the file.
function vanish(url, chunks, size, etag) {
    say({ event: 'vanished', at: size });
    client.unregister(device, (error) => {
        if (error) {
            return fail('unregister', error);
        }
        register(() => {
            const headers = { Range: 'bytes=' + size + '-', 'If-Match': etag };
            http.get(url, { headers: headers }, (res) => {
                say({ event: 'resumed', status: res.statusCode, from: size });
                res.on('data', (c) => chunks.push(c));
                res.on('end', () => downloaded(res.statusCode, chunks));
            }).on('error', (e) => fail('resume', e));
        });
    });
}

function handlers(info) {
    client.setHandler(info.serverInfo, 'write', (objectType, objectId, resourceId, value, done) => {
        done();
        if (String(objectType) === '5' && String(resourceId) === '1' && value) {
            download(String(value));
        }
    });
    client.setHandler(info.serverInfo, 'execute', (objectType, objectId, resourceId, value, done) => {
        done();
        if (String(objectType) === '5' && String(resourceId) === '2') {
            say({ event: 'execute' });
            set('3', '3').then(reboot).catch((e) => fail('state 3', e));
        }
    });
}

function register(then) {
    client.register(host, Number(port), '', endpoint, (error, info) => {
        if (error) {
            return fail('register', error);
        }
        device = info;
        handlers(info);
        say({ event: 'registered', location: info.location });
        if (then) {
            then();
        }
    });
}

function reboot() {
    say({ event: 'reboot' });
    // A device that reboots de-registers on a best-effort basis: node-coap's agent may send the
    // De-register from a new source port, which the server (rightly, over NoSec) does not take
    // as the registration's own; the Register after the reboot replaces it anyway.
    client.unregister(device, (error) => {
        if (error) {
            say({ event: 'unregister-refused', error: String(error) });
        }
        set('3', '0')
            .then(() => set('5', finalResult))
            .then(() => register(() => say({ event: 'rebooted', result: finalResult })))
            .catch((e) => fail('reboot', e));
    });
}

Promise.all([create('/3/0'), create('/5/0')])
    .then(() => new Promise((resolve, reject) =>
        client.registry.setResource('/3/0', '3', '1.0.0', (e) => (e ? reject(e) : resolve()))))
    .then(() => set('3', '0'))
    .then(() => set('5', '0'))
    .then(() => register())
    .catch((e) => fail('setup', e));
