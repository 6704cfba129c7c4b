#!/usr/bin/env node
// A strict OCPP charge point (npm ocpp-rpc, RPCClient with strictMode) that gridflex's
// CSMS is tested against.  Every message in either direction is validated against the
// OCA JSON schemas (ajv); a violation prints {"event":"error",...} and exits with code 2.
//
//   node station.js <ws-url> <station-id> <password> <ocpp1.6|ocpp2.0.1|ocpp2.1> [timeout-s]
//   node station.js --self-test     (proves the strict validators reject bad messages)
//
// Scenario: connect (basic auth), BootNotification, Heartbeat, Authorize, StatusNotification,
// then a transaction with meter values (1.6: StartTransaction, MeterValues sent twice; 2.x:
// TransactionEvent Started, Updated sent twice, 2.1 with an export register) and for 2.x
// NotifyEVChargingNeeds; then it prints {"event":"ready"} and serves the CSMS:
// SetChargingProfile (recorded, Accepted), GetCompositeSchedule (derived from the last
// profile), ClearChargingProfile.  Commands on stdin: "end" ends the transaction (1.6
// StopTransaction with transactionData, 2.x TransactionEvent Ended), "done" (or end of
// stdin, once ready) closes and exits 0.  After the timeout (default 20 s) it exits 4 by itself.
// Exit codes: 0 done, 2 schema violation or failed call, 3 closed by the CSMS, 4 timeout.
// Stdout carries exactly one JSON object per line; diagnostics go to stderr.
'use strict';

const { RPCClient, createValidator } = require('ocpp-rpc');
const readline = require('node:readline');

const schemas21 = require('ocpp-rpc/lib/schemas/ocpp2_1.json');

// ocpp-rpc 2.2.1 looks schemas up as `urn:<Action>.req` / `urn:<Action>.conf`, but its
// bundled OCPP 2.1 schemas carry the OCA ids `urn:<Action>Request` / `urn:<Action>Response`
// (and `urn:NotifyPeriodicEventStream` for that SEND message), so its own 2.1 strict mode
// fails every message with "Schema 'urn:BootNotification.req' is missing".  Re-key a copy.
function rekey21(schemas) {
    return schemas.map((schema) => {
        const id = schema.$id;
        let key;
        if (/Request$/.test(id)) key = id.replace(/Request$/, '.req');
        else if (/Response$/.test(id)) key = id.replace(/Response$/, '.conf');
        else key = `${id}.req`; // NotifyPeriodicEventStream: a SEND, request only
        return { ...schema, $id: key };
    });
}

const validator21 = createValidator('ocpp2.1', rekey21(schemas21));
const standardValidators = require('ocpp-rpc/lib/standard-validators');

function validatorFor(protocol) {
    if (protocol === 'ocpp2.1') return validator21;
    return standardValidators.find((v) => v.subprotocol === protocol);
}

function emit(event, fields = {}) {
    process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

function isoNow() {
    return new Date().toISOString();
}

function isoAt(offsetS) {
    const base = new Date();
    base.setUTCMilliseconds(0);
    return new Date(base.getTime() + offsetS * 1000).toISOString().replace('.000Z', 'Z');
}

// --- self-test: the validators really are strict ---------------------------------------
function selfTest() {
    const good = {
        'ocpp1.6': ['SetChargingProfile', {
            connectorId: 1, csChargingProfiles: {
                chargingProfileId: 1, stackLevel: 0, chargingProfilePurpose: 'TxDefaultProfile',
                chargingProfileKind: 'Absolute', chargingSchedule: {
                    chargingRateUnit: 'A', startSchedule: '2026-11-20T16:00:00Z',
                    chargingSchedulePeriod: [{ startPeriod: 0, limit: 16 }] } } },
            (p) => { delete p.csChargingProfiles.stackLevel; },
            (p) => { p.csChargingProfiles.chargingSchedule.startSchedule = '2026-11-20 16:00'; }],
        'ocpp2.0.1': ['SetChargingProfile', {
            evseId: 1, chargingProfile: {
                id: 1, stackLevel: 0, chargingProfilePurpose: 'TxDefaultProfile',
                chargingProfileKind: 'Absolute', chargingSchedule: [{
                    id: 1, chargingRateUnit: 'A', startSchedule: '2026-11-20T16:00:00Z',
                    chargingSchedulePeriod: [{ startPeriod: 0, limit: 16 }] }] } },
            (p) => { delete p.chargingProfile.stackLevel; },
            (p) => { p.chargingProfile.chargingSchedule[0].startSchedule = '2026-11-20 16:00'; }],
    };
    good['ocpp2.1'] = good['ocpp2.0.1'];
    const results = {};
    let ok = true;
    for (const [protocol, [action, payload, ...breakers]] of Object.entries(good)) {
        const validator = validatorFor(protocol);
        const verdict = (params) => {
            try {
                validator.validate(`urn:${action}.req`, params);
                return 'valid';
            } catch (err) {
                return `${err.rpcErrorCode}: ${err.message}`;
            }
        };
        const bad = breakers.map((breaker) => {
            const copy = JSON.parse(JSON.stringify(payload));
            breaker(copy);
            return verdict(copy);
        });
        results[protocol] = { good: verdict(payload), bad };
        ok = ok && results[protocol].good === 'valid' && bad.every((v) => v !== 'valid');
    }
    emit('self-test', { ok, results });
    process.exit(ok ? 0 : 2);
}

// --- the charge point -------------------------------------------------------------------
async function main() {
    const [url, identity, password, protocol, timeoutArg] = process.argv.slice(2);
    if (!url || !identity || password === undefined || !protocol) {
        process.stderr.write('usage: station.js <ws-url> <station-id> <password> <protocol> '
            + '[timeout-s] | --self-test\n');
        process.exit(64);
    }
    const timeoutS = Number(timeoutArg ?? 20);
    const v16 = protocol === 'ocpp1.6';
    const v21 = protocol === 'ocpp2.1';

    let finished = false;
    let client;
    const finish = async (code) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        try {
            if (client) await client.close({ code: 1000, force: code !== 0 });
        } catch (err) {
            process.stderr.write(`close: ${err}\n`);
        }
        emit('exit', { code });
        process.exit(code);
    };
    const fail = (fields) => {
        emit('error', fields);
        // let a CALLERROR reply for the offending message go out before closing
        setTimeout(() => finish(2), 100);
    };
    const timer = setTimeout(() => {
        emit('timeout', { seconds: timeoutS });
        finish(4);
    }, timeoutS * 1000);

    client = new RPCClient({
        endpoint: url.replace(/\/+$/, ''),
        identity,
        password,
        protocols: [protocol],
        strictMode: true,
        strictModeValidators: [validator21],
        reconnect: false,
        callTimeoutMs: 10000,
        respondWithDetailedErrors: true,
    });

    client.on('strictValidationFailure', ({ method, params, result, error, outbound, isCall }) => {
        fail({
            kind: 'strict', method, outbound, isCall,
            direction: `${outbound ? 'station->csms' : 'csms->station'} ${isCall ? 'call' : 'result'}`,
            rpcErrorCode: error.rpcErrorCode, message: error.message,
            errors: error.details?.errors, params, result,
        });
    });
    client.on('badMessage', ({ buffer, error }) => {
        fail({ kind: 'badMessage', message: String(error?.message ?? error),
            raw: buffer ? buffer.toString('utf8') : null });
    });
    let connected = false;
    client.on('close', ({ code, reason }) => {
        emit('closed', { code, reason: String(reason ?? '') });
        // a failed connect() is reported where it is awaited
        if (connected && !finished) finish(code === 1000 ? 0 : 3);
    });

    // --- handlers for what the CSMS sends ---
    const profiles = []; // every profile still installed, newest last

    const profileOf = (params) => (v16 ? params.csChargingProfiles : params.chargingProfile);
    const idOf = (profile) => (v16 ? profile.chargingProfileId : profile.id);
    const scheduleOf = (profile) => (v16 ? profile.chargingSchedule : profile.chargingSchedule[0]);

    client.handle('SetChargingProfile', ({ params }) => {
        const profile = profileOf(params);
        const at = profiles.findIndex((p) => idOf(profileOf(p)) === idOf(profile));
        if (at >= 0) profiles.splice(at, 1);
        profiles.push(params);
        emit('profile', { payload: params });
        return { status: 'Accepted' };
    });

    client.handle('GetCompositeSchedule', ({ params }) => {
        const last = profiles[profiles.length - 1];
        const evse = v16 ? params.connectorId : params.evseId;
        let reply;
        const schedule = last && scheduleOf(profileOf(last));
        const unit = params.chargingRateUnit ?? (schedule && schedule.chargingRateUnit);
        if (!schedule || unit !== schedule.chargingRateUnit) {
            reply = { status: 'Rejected' }; // nothing installed, or a unit we do not convert
        } else {
            const duration = Math.min(params.duration, schedule.duration ?? params.duration);
            const periods = schedule.chargingSchedulePeriod
                .filter((p) => p.startPeriod < duration)
                .map((p) => ({ ...p }));
            if (v16) {
                reply = {
                    status: 'Accepted', connectorId: evse, scheduleStart: schedule.startSchedule,
                    chargingSchedule: {
                        duration, startSchedule: schedule.startSchedule,
                        chargingRateUnit: unit, chargingSchedulePeriod: periods,
                    },
                };
            } else {
                reply = {
                    status: 'Accepted', schedule: {
                        evseId: evse, duration, scheduleStart: schedule.startSchedule,
                        chargingRateUnit: unit, chargingSchedulePeriod: periods,
                    },
                };
            }
        }
        emit('composite', { request: params, response: reply });
        return reply;
    });

    client.handle('ClearChargingProfile', ({ params }) => {
        const id = v16 ? params.id : params.chargingProfileId;
        const before = profiles.length;
        for (let i = profiles.length - 1; i >= 0; i -= 1) {
            if (id === undefined || idOf(profileOf(profiles[i])) === id) profiles.splice(i, 1);
        }
        const reply = { status: profiles.length < before ? 'Accepted' : 'Unknown' };
        emit('clear', { request: params, response: reply, remaining: profiles.length });
        return reply;
    });

    client.handle(({ method, params }) => {
        emit('unhandled', { method, params });
        const err = new Error(`station.js does not handle ${method}`);
        err.rpcErrorCode = 'NotImplemented';
        throw err;
    });

    // --- what the station sends ---
    const call = async (method, params) => {
        const response = await client.call(method, params);
        emit('call', { method, request: params, response });
        return response;
    };

    const connector = 1;
    let transactionId;
    let seqNo = 0;
    const sent = []; // meter readings this station reported, for the test to compare

    const transactionEvent = (eventType, triggerReason, meterValue, extra = {}) => {
        const params = {
            eventType, timestamp: isoNow(), triggerReason, seqNo: seqNo++,
            transactionInfo: { transactionId, ...(extra.transactionInfo ?? {}) },
            evse: { id: connector, connectorId: 1 }, meterValue,
        };
        if (extra.idToken) params.idToken = extra.idToken;
        return call('TransactionEvent', params).then((response) => ({ request: params, response }));
    };

    const energy = (wh, context, timestamp) => ({
        timestamp, sampledValue: [{ value: wh, context,
            measurand: 'Energy.Active.Import.Register', unitOfMeasure: { unit: 'Wh' } }],
    });

    const startTransaction = async () => {
        if (v16) {
            const begin = isoAt(0);
            const started = await call('StartTransaction', {
                connectorId: connector, idTag: 'TAG-1', meterStart: 1000, timestamp: begin });
            transactionId = started.transactionId;
            const meterValue = [{ timestamp: isoAt(60), sampledValue: [
                { value: '1.5', measurand: 'Energy.Active.Import.Register', unit: 'kWh',
                    context: 'Sample.Periodic' },
                { value: '7400', measurand: 'Power.Active.Import', unit: 'W',
                    context: 'Sample.Periodic' },
                { value: '55', measurand: 'SoC', unit: 'Percent', context: 'Sample.Periodic' },
                { value: '230.1', measurand: 'Voltage', unit: 'V', context: 'Sample.Periodic' },
            ] }];
            for (let i = 0; i < 2; i += 1) { // a retransmission: must be stored once
                await call('MeterValues', { connectorId: connector, transactionId, meterValue });
            }
            sent.push({ measurand: 'Energy.Active.Import.Register', wh: 1000,
                timestamp: begin, context: 'Transaction.Begin' });
            sent.push({ measurand: 'Energy.Active.Import.Register', wh: 1500,
                timestamp: meterValue[0].timestamp, context: 'Sample.Periodic' });
            sent.push({ measurand: 'Power.Active.Import', w: 7400,
                timestamp: meterValue[0].timestamp, context: 'Sample.Periodic' });
            sent.push({ measurand: 'SoC', percent: 55,
                timestamp: meterValue[0].timestamp, context: 'Sample.Periodic' });
            return;
        }
        transactionId = `${identity}-tx-1`;
        const t0 = isoAt(0);
        const t1 = isoAt(60);
        await transactionEvent('Started', 'Authorized', [energy(10000, 'Transaction.Begin', t0)],
            { idToken: { idToken: 'TAG-1', type: 'ISO14443' },
                transactionInfo: { chargingState: 'Charging' } });
        sent.push({ measurand: 'Energy.Active.Import.Register', wh: 10000, timestamp: t0,
            context: 'Transaction.Begin' });
        const updated = [
            // 12.5 kWh as 12.5 x 10^3 Wh: the CSMS must apply the multiplier
            { value: 12.5, context: 'Sample.Periodic', measurand: 'Energy.Active.Import.Register',
                unitOfMeasure: { unit: 'Wh', multiplier: 3 } },
            { value: 7.4, context: 'Sample.Periodic', measurand: 'Power.Active.Import',
                unitOfMeasure: { unit: 'kW' } },
            { value: 61, context: 'Sample.Periodic', measurand: 'SoC',
                unitOfMeasure: { unit: 'Percent' } },
        ];
        sent.push({ measurand: 'Energy.Active.Import.Register', wh: 12500, timestamp: t1,
            context: 'Sample.Periodic' });
        sent.push({ measurand: 'Power.Active.Import', w: 7400, timestamp: t1,
            context: 'Sample.Periodic' });
        sent.push({ measurand: 'SoC', percent: 61, timestamp: t1, context: 'Sample.Periodic' });
        if (v21) {
            updated.push({ value: 0.75, context: 'Sample.Periodic',
                measurand: 'Energy.Active.Export.Register', unitOfMeasure: { unit: 'kWh' } });
            sent.push({ measurand: 'Energy.Active.Export.Register', wh: 750, timestamp: t1,
                context: 'Sample.Periodic' });
        }
        const update = await transactionEvent('Updated', 'MeterValuePeriodic',
            [{ timestamp: t1, sampledValue: updated }]);
        // a retransmission (same seqNo, same readings): must be stored once
        await call('TransactionEvent', update.request);
    };

    const endTransaction = async () => {
        const t2 = isoAt(120);
        if (v16) {
            const clock = isoAt(90);
            await call('StopTransaction', {
                transactionId, meterStop: 4200, timestamp: t2, reason: 'Local', idTag: 'TAG-1',
                transactionData: [{ timestamp: clock, sampledValue: [
                    { value: '3100', measurand: 'Energy.Active.Import.Register', unit: 'Wh',
                        context: 'Sample.Clock' }] }],
            });
            sent.push({ measurand: 'Energy.Active.Import.Register', wh: 3100,
                timestamp: clock, context: 'Sample.Clock' });
            sent.push({ measurand: 'Energy.Active.Import.Register', wh: 4200, timestamp: t2,
                context: 'Transaction.End' });
        } else {
            const ended = [{ value: 15000, context: 'Transaction.End',
                measurand: 'Energy.Active.Import.Register', unitOfMeasure: { unit: 'Wh' } }];
            sent.push({ measurand: 'Energy.Active.Import.Register', wh: 15000, timestamp: t2,
                context: 'Transaction.End' });
            if (v21) {
                ended.push({ value: 2, context: 'Transaction.End',
                    measurand: 'Energy.Active.Export.Register', unitOfMeasure: { unit: 'kWh' } });
                sent.push({ measurand: 'Energy.Active.Export.Register', wh: 2000, timestamp: t2,
                    context: 'Transaction.End' });
            }
            await transactionEvent('Ended', 'StopAuthorized', [{ timestamp: t2,
                sampledValue: ended }], { transactionInfo: { stoppedReason: 'Local' } });
        }
        emit('ended', { transactionId, meter: sent });
    };

    const commands = readline.createInterface({ input: process.stdin });
    commands.on('line', async (line) => {
        const command = line.trim();
        try {
            if (command === 'end') await endTransaction();
            else if (command === 'done') await finish(0);
            else if (command) emit('unknown-command', { command });
        } catch (err) {
            fail({ kind: 'call', command, rpcErrorCode: err.rpcErrorCode,
                message: String(err.message ?? err) });
        }
    });
    let ready = false;
    let stdinClosed = false;
    // end of stdin is "done", but not before the scenario is through (stdin may be /dev/null)
    commands.on('close', () => {
        stdinClosed = true;
        if (ready) setTimeout(() => finish(0), 50);
    });

    try {
        await client.connect();
        connected = true;
        emit('connected', { protocol: client.protocol });
        const boot = v16
            ? await call('BootNotification', { chargePointVendor: 'ocpp-rpc',
                chargePointModel: 'strict-peer', firmwareVersion: '2.2.1' })
            : await call('BootNotification', { reason: 'PowerUp',
                chargingStation: { vendorName: 'ocpp-rpc', model: 'strict-peer',
                    firmwareVersion: '2.2.1' } });
        emit('boot', { status: boot.status, response: boot });
        await call('Heartbeat', {});
        const authorized = await call('Authorize', v16 ? { idTag: 'TAG-1' }
            : { idToken: { idToken: 'TAG-1', type: 'ISO14443' } });
        emit('authorized', { status: v16 ? authorized.idTagInfo.status
            : authorized.idTokenInfo.status });
        await call('StatusNotification', v16
            ? { connectorId: connector, errorCode: 'NoError', status: 'Preparing' }
            : { timestamp: isoNow(), connectorStatus: 'Occupied', evseId: connector,
                connectorId: 1 });
        await startTransaction();
        if (!v16) {
            const needs = await call('NotifyEVChargingNeeds', { evseId: connector, chargingNeeds: {
                requestedEnergyTransfer: 'AC_three_phase', departureTime: '2026-11-20T18:00:00Z',
                acChargingParameters: { energyAmount: 20000, evMinCurrent: 6, evMaxCurrent: 16,
                    evMaxVoltage: 400 } } });
            emit('needs', { status: needs.status });
        }
        emit('ready', { transactionId: String(transactionId), meter: sent });
        ready = true;
        if (stdinClosed) setTimeout(() => finish(0), 50);
    } catch (err) {
        fail({ kind: connected ? 'call' : 'connect', rpcErrorCode: err.rpcErrorCode,
            message: String(err.message ?? err) });
    }
}

if (process.argv[2] === '--self-test') {
    selfTest();
} else {
    main().catch((err) => {
        emit('error', { kind: 'crash', message: String(err?.stack ?? err) });
        process.exit(2);
    });
}
