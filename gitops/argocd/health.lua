-- Argo CD health check for kubescribe.io/TranscriptionRequest.
-- Install it under the argocd-cm key
-- resource.customizations.health.kubescribe.io_TranscriptionRequest (argocd-cm.yaml).
--
--   no status yet, Pending, Queued, Running    -> Progressing
--   status for an older generation (spec edit) -> Progressing
--   Succeeded                                  -> Healthy
--   Failed                                     -> Degraded, with the reason and message
--   any other phase                            -> Unknown
--
-- Lua 5.1 (Argo CD runs gopher-lua); tests/test_argocd_health.py runs it with lupa.
local hs = {}
local status = obj.status

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubescribe operator"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to handle generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local message = status.message
if message == nil then
  message = ""
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  if status.cached == true then
    hs.message = "Answered from the result cache"
  elseif message ~= "" then
    hs.message = message
  else
    hs.message = "Transcribed"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  if status.reason ~= nil and status.reason ~= "" then
    if message ~= "" then
      hs.message = status.reason .. ": " .. message
    else
      hs.message = status.reason
    end
  elseif message ~= "" then
    hs.message = message
  else
    hs.message = "Transcription failed"
  end
elseif phase == "Pending" or phase == "Queued" or phase == "Running" then
  hs.status = "Progressing"
  if message ~= "" then
    hs.message = phase .. ": " .. message
  else
    hs.message = phase
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
