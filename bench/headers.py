"""Realistic DICOM headers for the benchmark delivery, built with pydicom and serialised as the DICOM JSON model.

A delivery is planned as patients, studies and series; each instance's header is the series-level elements (built
once per series) plus its own instance-level elements. Vendor private groups are modelled on what CT and MR
scanners really write (GE ``GEMS_*`` blocks, Siemens CSA headers with their SV10 layout and an ASCCONV protocol),
which is what makes real headers 5 to 20 KB. Every value derives from the seed, so a delivery is reproducible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import struct
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
}
# Share of series per modality; CT dominates a typical hospital archive by instance count.
MODALITY_WEIGHTS = {"CT": 0.55, "MR": 0.25, "PT": 0.12, "XA": 0.08}
FIRST_STUDY_DATE = dt.date(2008, 1, 1)
LAST_STUDY_DATE = dt.date(2024, 12, 31)

_FAMILY = ["Smith", "Garcia", "Nguyen", "Okafor", "Kowalski", "Rossi", "Dubois", "Jensen", "Haddad", "Silva",
           "Johansson", "Novak", "Fischer", "O'Brien", "Tanaka", "Petrov", "Martin", "Murphy", "Cohen", "Kim"]
_GIVEN = ["Anna", "James", "Mohammed", "Li", "Sofia", "Lucas", "Maria", "David", "Amara", "Noah", "Elena", "Omar",
          "Grace", "Mateo", "Ingrid", "Yusuf", "Chloe", "Ravi", "Hana", "Pierre"]
# Names that need a character set beyond ASCII: Latin-1 ones with ISO_IR 100, the others with UTF-8.
_LATIN1 = [("Müller", "Jürgen"), ("Lefèvre", "Anaïs"), ("Sørensen", "Bjørn"), ("Peña", "José"), ("Åström", "Märta")]
_UTF8 = [("山田", "太郎"), ("Øvergård", "Łukasz"), ("Дмитриев", "Олег"), ("Kovačević", "Žarko")]
_INSTITUTIONS = [
    ("St Mary's General Hospital", "14 Harbour Road^^Portsmouth^^PO1 2AB^UK", "Radiology"),
    ("Universitätsklinikum Nord", "Hauptstraße 10^^Hamburg^^20095^DE", "Diagnostische Radiologie"),
    ("Riverside Imaging Center", "2200 River Ave^^Springfield^IL^62704^US", "Imaging"),
    ("Hôpital Saint-Louis", "1 Avenue Claude Vellefaux^^Paris^^75010^FR", "Imagerie Médicale"),
    ("Northside Community Clinic", "88 Elm Street^^Dublin^^D09^IE", "Radiology"),
]
_SCANNERS = {
    "CT": [("GE MEDICAL SYSTEMS", "Revolution CT", "revo_ct_22BW.40"), ("GE MEDICAL SYSTEMS", "LightSpeed VCT", "07MW18.4"),
           ("SIEMENS", "SOMATOM Definition AS+", "syngo CT VA48A")],
    "MR": [("SIEMENS", "Skyra", "syngo MR E11"), ("SIEMENS", "Prisma", "syngo MR XA30"),
           ("GE MEDICAL SYSTEMS", "SIGNA Premier", "29\\LX\\MR Software release:RX29.1")],
    "PT": [("SIEMENS", "Biograph64", "VG60A"), ("GE MEDICAL SYSTEMS", "Discovery MI", "pet_mi.4")],
    "XA": [("Philips Medical Systems", "AlluraClarity", "8.2.17.0"), ("SIEMENS", "AXIOM-Artis", "VC21C")],
}
_CT_PROTOCOLS = [
    ("CHEST", "CT THORAX W CONTRAST", "71260", "CT chest with contrast", "STANDARD", "CHEST"),
    ("ABDOMEN", "CT ABD/PELVIS W CONTRAST", "74177", "CT abdomen and pelvis with contrast", "SOFT", "ABDOMEN"),
    ("HEAD", "CT HEAD WO CONTRAST", "70450", "CT head without contrast", "H30s", "HEAD"),
    ("CHEST", "CTA CHEST PE", "71275", "CT angiography chest", "B26f", "CHEST"),
]
_MR_PROTOCOLS = [
    ("BRAIN", "MRI BRAIN W/WO", "70553", "MRI brain with and without contrast", ["SE"], ["SK", "SP", "OSP"], "t1_se_tra"),
    ("KNEE", "MRI KNEE WO", "73721", "MRI knee joint without contrast", ["SE"], ["SK", "SP"], "pd_tse_fs_sag"),
    ("LSPINE", "MRI L-SPINE WO", "72148", "MRI lumbar spine without contrast", ["SE", "IR"], ["SK", "SP", "MP"],
     "t2_tse_sag"),
    ("PROSTATE", "MRI PELVIS MP", "72197", "MRI pelvis multiparametric", ["EP"], ["SK", "SP"], "ep2d_diff_tra"),
]
_RADIOPHARMACEUTICALS = [("Fluorodeoxyglucose", "C-B1031", "^18^Fluorine", "C-111A1", 6586.2, 370_000_000.0),
                         ("PSMA-11", "C-B1140", "^68^Gallium", "C-131A3", 4062.6, 180_000_000.0)]


@dataclass(frozen=True)
class InstanceSpec:
    """One planned instance: where it sits in the patient/study/series tree, and its pixel payload kind."""

    index: int
    uid: str
    study: int
    series: int
    modality: str
    study_date: str
    instance_number: int
    series_size: int
    pixel_kind: str  # native | j2k
    pixel_image: int  # index into the pre-built pixel pool of that kind


def make_uid(seed: int, kind: str, key: object) -> str:
    """A deterministic ``2.25.<int>`` UID (PS3.5 B.2) for ``kind`` and ``key`` under ``seed``."""
    digest = hashlib.sha256(f"dicom-reassembly-bench:{seed}:{kind}:{key}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def plan_instances(n: int, seed: int, j2k_fraction: float, pool_sizes: dict[str, int]) -> list[InstanceSpec]:
    """Plan ``n`` instances as studies of one to three series; dates spread evenly over 2008-2024."""
    rng = random.Random(f"plan:{seed}")
    span = (LAST_STUDY_DATE - FIRST_STUDY_DATE).days
    specs: list[InstanceSpec] = []
    study = series = 0
    while len(specs) < n:
        date = (FIRST_STUDY_DATE + dt.timedelta(days=rng.randrange(span + 1))).strftime("%Y%m%d")
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            modality = rng.choices(list(MODALITY_WEIGHTS), weights=list(MODALITY_WEIGHTS.values()))[0]
            size = min(n - len(specs), rng.randint(4, 40) if modality != "XA" else rng.randint(1, 8))
            for k in range(size):
                i = len(specs)
                kind = "j2k" if rng.random() < j2k_fraction else "native"
                specs.append(InstanceSpec(
                    index=i, uid=make_uid(seed, "instance", i), study=study, series=series, modality=modality,
                    study_date=date, instance_number=k + 1, series_size=size, pixel_kind=kind,
                    pixel_image=rng.randrange(pool_sizes[kind])))
            series += 1
            if len(specs) >= n:
                break
        study += 1
    return specs


def _csa(entries: list[tuple[str, str, list[str]]]) -> bytes:
    """A Siemens CSA2 (``SV10``) block: the binary layout scanners write into (0029,xx10) and (0029,xx20)."""
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<II", len(entries), 77)
    for name, vr, values in entries:
        out += name.encode("ascii")[:63].ljust(64, b"\0")
        out += struct.pack("<i4siii", max(1, len(values)), vr.encode("ascii").ljust(4, b"\0"), 3, len(values),
                           77 if values else 205)
        for v in values:
            data = v.encode("ascii") + b"\0"
            out += struct.pack("<iiii", len(data), 77, len(data), 77)
            out += data.ljust((len(data) + 3) // 4 * 4, b"\0")
    if len(out) % 2:
        out += b"\0"
    return bytes(out)


def _ascconv(rng: random.Random, protocol: str) -> str:
    """An excerpt of a Siemens ``MrPhoenixProtocol`` ASCCONV block, as stored in the CSA series header."""
    lines = ["### ASCCONV BEGIN object=MrProtDataImpl@MrProtocolData version=51130001 ###",
             "ulVersion = 0x14b44b6", f'tSequenceFileName = "%SiemensSeq%\\{protocol.split("_")[0]}"',
             f'tProtocolName = "{protocol}"', 'tReferenceImage0 = "1.3.12.2.1107.5.2.43.166003"']
    for i in range(rng.randint(1, 2)):
        lines += [f"sRXSPEC.alDwellTime[{i}] = {rng.choice((2500, 3900, 5100, 7800))}",
                  f"sSliceArray.asSlice[{i}].dThickness = {rng.choice((3.0, 4.0, 5.0))}",
                  f"sSliceArray.asSlice[{i}].dPhaseFOV = {rng.choice((200.0, 220.0, 230.0))}",
                  f"sSliceArray.asSlice[{i}].dReadoutFOV = {rng.choice((200.0, 220.0, 230.0))}",
                  f"sSliceArray.asSlice[{i}].sPosition.dSag = {rng.uniform(-20, 20):.6f}",
                  f"sSliceArray.asSlice[{i}].sPosition.dCor = {rng.uniform(-40, 10):.6f}",
                  f"sSliceArray.asSlice[{i}].sPosition.dTra = {rng.uniform(-60, 60):.6f}",
                  f"sSliceArray.asSlice[{i}].sNormal.dTra = 1"]
    for coil in range(rng.randint(1, 2)):
        lines += [f'sCoilSelectMeas.aRxCoilSelectData[0].asList[{coil}].sCoilElementID.tCoilID = "HeadNeck_20"',
                  f"sCoilSelectMeas.aRxCoilSelectData[0].asList[{coil}].sCoilElementID.lCoilCopy = 1",
                  f'sCoilSelectMeas.aRxCoilSelectData[0].asList[{coil}].sCoilElementID.tElement = "H{coil % 4 + 1}"',
                  f"sCoilSelectMeas.aRxCoilSelectData[0].asList[{coil}].lElementSelected = 1",
                  f"sCoilSelectMeas.aRxCoilSelectData[0].asList[{coil}].lRxChannelConnected = {coil + 1}"]
    lines += [f"alTR[0] = {rng.choice((450000, 3000000, 5000000))}", f"alTE[0] = {rng.choice((9800, 89000, 12000))}",
              f"sKSpace.lBaseResolution = {rng.choice((256, 320, 384))}", "sKSpace.lPhaseEncodingLines = 256",
              "sKSpace.ucDimension = 0x2", f"sTXSPEC.asNucleusInfo[0].lFrequency = {123_200_000 + rng.randint(0, 9999)}",
              f"sTXSPEC.asNucleusInfo[0].flReferenceAmplitude = {rng.uniform(250, 400):.5f}",
              f"lTotalScanTimeSec = {rng.randint(90, 420)}", "### ASCCONV END ###"]
    return "\n".join(lines)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _patient(seed: int, study: int) -> dict[str, Any]:
    """Patient module values; one patient in eight comes back for a second study."""
    who = study if study % 8 != 7 else study - 1
    rng = random.Random(f"patient:{seed}:{who}")
    pick = rng.random()
    if pick < 0.12:
        family, given = rng.choice(_LATIN1)
        charset = "ISO_IR 100"
    elif pick < 0.18:
        family, given = rng.choice(_UTF8)
        charset = "ISO_IR 192"
    else:
        family, given = rng.choice(_FAMILY), rng.choice(_GIVEN)
        charset = rng.choice((None, "ISO_IR 100"))
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(365 * 92))
    return {"name": f"{family}^{given}", "charset": charset, "id": f"MRN{rng.randrange(10**7, 10**8)}",
            "issuer": rng.choice(("HOSP_A", "HOSP_B", "CLINIC_NORTH")), "birth": birth, "sex": rng.choice("MF"),
            "weight": round(rng.uniform(3.5, 130), 1), "size": round(rng.uniform(0.5, 2.0), 2),
            "other_id": f"NHS{rng.randrange(10**9, 10**10)}"}


def _age(birth: dt.date, on: dt.date) -> str:
    """PatientAge (AS) the way modalities fill it: days, weeks or months for the very young."""
    days = (on - birth).days
    if days < 0:
        return "000D"
    if days < 31:
        return f"{days:03d}D"
    if days < 120:
        return f"{days // 7:03d}W"
    if days < 730:
        return f"{days * 12 // 365:03d}M"
    return f"{min(999, days // 365):03d}Y"


class HeaderFactory:
    """Builds each planned instance's header JSON; series-level elements are encoded once per series."""

    def __init__(self, seed: int, matrix: int = 512) -> None:
        self.seed = seed
        self.matrix = matrix
        self._series_key: int | None = None
        self._series_json: dict[str, Any] = {}
        self._series_ctx: dict[str, Any] = {}

    def header(self, spec: InstanceSpec) -> bytes:
        """The header member bytes: compact DICOM JSON of one instance, without group 0002 and Pixel Data."""
        if spec.series != self._series_key:
            self._series_json, self._series_ctx = self._series(spec)
            self._series_key = spec.series
        model = dict(self._series_json)
        model.update(self._instance(spec).to_json_dict(bulk_data_threshold=10**9))
        return json.dumps(model, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    # ---------------------------------------------------------------- series level

    def _series(self, spec: InstanceSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        rng = random.Random(f"series:{self.seed}:{spec.series}")
        srng = random.Random(f"study:{self.seed}:{spec.study}")
        p = _patient(self.seed, spec.study)
        date = dt.datetime.strptime(spec.study_date, "%Y%m%d").date()
        inst_name, inst_addr, dept = srng.choice(_INSTITUTIONS)
        manufacturer, model, software = rng.choice(_SCANNERS[spec.modality])
        ds = Dataset()
        if p["charset"]:
            ds.SpecificCharacterSet = p["charset"]
        ds.SOPClassUID = SOP_CLASSES[spec.modality]
        # Patient
        ds.PatientName = p["name"]
        ds.PatientID = p["id"]
        ds.IssuerOfPatientID = p["issuer"]
        ds.PatientBirthDate = p["birth"].strftime("%Y%m%d")
        ds.PatientSex = p["sex"]
        ds.PatientAge = _age(p["birth"], date)
        ds.PatientWeight = str(p["weight"])
        ds.PatientSize = str(p["size"])
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = p["other_id"], "NHS", "TEXT"
        ds.OtherPatientIDsSequence = [other]
        # General study
        study_time = f"{srng.randint(7, 19):02d}{srng.randint(0, 59):02d}{srng.randint(0, 59):02d}.{srng.randint(0, 999999):06d}"
        ds.StudyInstanceUID = make_uid(self.seed, "study", spec.study)
        ds.StudyDate = spec.study_date
        ds.StudyTime = study_time
        ds.AccessionNumber = f"A{srng.randrange(10**9, 10**10)}"
        ds.StudyID = str(srng.randint(1000, 99999))
        ds.ReferringPhysicianName = f"{srng.choice(_FAMILY)}^{srng.choice(_GIVEN)}^^Dr"
        ds.InstitutionName = inst_name
        ds.InstitutionAddress = inst_addr
        ds.InstitutionalDepartmentName = dept
        ds.StationName = f"{spec.modality}{rng.randint(1, 9):02d}_{inst_name.split()[0][:6].upper()}"
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = model
        ds.DeviceSerialNumber = str(rng.randint(10000, 999999))
        ds.SoftwareVersions = software
        # General series and frame of reference
        ds.Modality = spec.modality
        ds.SeriesInstanceUID = make_uid(self.seed, "series", spec.series)
        ds.SeriesNumber = str(spec.series % 20 + 1)
        ds.SeriesDate = spec.study_date
        ds.SeriesTime = study_time
        ds.FrameOfReferenceUID = make_uid(self.seed, "frame", spec.study)
        ds.PositionReferenceIndicator = ""
        ds.OperatorsName = f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}"
        ds.PerformingPhysicianName = f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}"
        ds.PatientPosition = rng.choice(("HFS", "HFS", "FFS", "HFP"))
        ctx: dict[str, Any] = {"date": date, "study_time": study_time, "spacing": rng.choice((0.488281, 0.625, 0.703125,
                                                                                             0.78125, 0.9765625))}
        getattr(self, f"_series_{spec.modality.lower()}")(ds, rng, ctx, srng)
        # Request attributes: what the RIS asked for.
        req = Dataset()
        req.RequestedProcedureID = f"RP{srng.randrange(10**6, 10**7)}"
        req.ScheduledProcedureStepID = f"SPS{srng.randrange(10**6, 10**7)}"
        req.ScheduledProcedureStepDescription = ds.get("StudyDescription", "")
        req.ScheduledProtocolCodeSequence = [_code(ctx.get("cpt", "76499"), "CPT4", ds.get("StudyDescription", "IMAGING"))]
        ds.RequestAttributesSequence = [req]
        ds.ProcedureCodeSequence = [_code(ctx.get("cpt", "76499"), "CPT4", ctx.get("cpt_meaning", "Imaging procedure"))]
        ds.PerformedProcedureStepID = f"PPS{rng.randrange(10**6, 10**7)}"
        ds.PerformedProcedureStepStartDate = spec.study_date
        ds.PerformedProcedureStepStartTime = study_time
        ds.PerformedProcedureStepDescription = ds.get("StudyDescription", "")
        # Image pixel module: every payload is matrix x matrix (512 in the benchmark), 12 bits stored in 16.
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = self.matrix
        bits = ctx.get("bits_stored", 12)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.PixelSpacing = [ctx["spacing"], ctx["spacing"]]
        return ds.to_json_dict(bulk_data_threshold=10**9), ctx

    def _series_ct(self, ds: Dataset, rng: random.Random, ctx: dict[str, Any], srng: random.Random) -> None:
        body, desc, cpt, meaning, kernel, region = srng.choice(_CT_PROTOCOLS)
        ctx.update(cpt=cpt, cpt_meaning=meaning, thickness=rng.choice((0.625, 1.25, 2.5, 5.0)), kernel=kernel)
        ds.StudyDescription = desc
        ds.SeriesDescription = rng.choice((f"{region.title()} {ctx['thickness']}mm", "Axial", f"{kernel} recon"))
        ds.ProtocolName = f"{ctx['thickness']} {body.title()} routine"
        ds.BodyPartExamined = body
        ds.ScanOptions = "HELICAL MODE"
        ds.SliceThickness = str(ctx["thickness"])
        ds.KVP = str(rng.choice((80, 100, 120, 140)))
        ds.DataCollectionDiameter = "500.0"
        ds.ReconstructionDiameter = str(round(self.matrix * ctx["spacing"], 3))
        ds.DistanceSourceToDetector = "946.746"
        ds.DistanceSourceToPatient = "538.52"
        ds.GantryDetectorTilt = "0.0"
        ds.TableHeight = str(round(rng.uniform(120, 180), 1))
        ds.RotationDirection = "CW"
        ds.FilterType = rng.choice(("BODY FILTER", "HEAD FILTER"))
        ds.GeneratorPower = str(rng.choice((48000, 72000, 96000)))
        ds.FocalSpots = ["0.7", "1.2"][: rng.randint(1, 2)]
        ds.ConvolutionKernel = kernel
        ds.SpiralPitchFactor = rng.choice((0.516, 0.984, 1.375))
        ds.SingleCollimationWidth = 0.625
        ds.TotalCollimationWidth = rng.choice((20.0, 40.0, 80.0))
        ds.TableSpeed = rng.choice((39.37, 78.75, 137.5))
        ds.ContrastBolusAgent = rng.choice(("OMNIPAQUE 350", "ISOVUE 370", ""))
        ds.CTDIPhantomTypeCodeSequence = [_code("113691", "DCM", "IEC Body Dosimetry Phantom")]
        ds.AnatomicRegionSequence = [_code(region[:1] + "-D" + str(rng.randint(1000, 9999)), "SRT", region.title())]
        if ds.Manufacturer.startswith("GE"):
            self._ge_private(ds, rng)
            ctx["ge"] = True
        ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1600"]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"

    @staticmethod
    def _ge_private(ds: Dataset, rng: random.Random) -> None:
        """GE's series-level private blocks: identification, acquisition, relationship and parameter groups."""
        iden = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
        iden.add_new(0x01, "LO", "CT_LIGHTSPEED")
        iden.add_new(0x02, "SH", f"CT{rng.randint(1, 99):02d}")
        iden.add_new(0x04, "SH", "CT01")
        iden.add_new(0x27, "SL", rng.randint(10**9, 2 * 10**9))
        acq = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        for off, vr, val in [(0x02, "SL", 888), (0x03, "DS", "1.0"), (0x04, "DS", "1.0"), (0x0F, "DS", "1099.3"),
                             (0x11, "SS", 2), (0x18, "LO", "S"), (0x1A, "DS", str(round(rng.uniform(-400, 0), 3))),
                             (0x1B, "LO", "I"), (0x23, "DS", "39.375"), (0x24, "DS", "9.6"), (0x25, "SS", 1),
                             (0x26, "SL", 360), (0x27, "DS", "0.5"), (0x2C, "SL", rng.randint(1000, 9000)),
                             (0x2E, "DS", "0.0"), (0x2F, "DS", "984.0"), (0x39, "SS", 4), (0x42, "SS", 0),
                             (0x43, "SS", 0), (0x47, "SS", 1), (0x52, "SS", 0), (0x6A, "SS", 1), (0x6B, "SS", 0),
                             (0x9E, "LO", "Helical"), (0xDD, "SL", 1), (0xDE, "DS", "0.0")]:
            acq.add_new(off, vr, val)
        rela = ds.private_block(0x0021, "GEMS_RELA_01", create=True)
        rela.add_new(0x03, "SS", 0)
        rela.add_new(0x35, "SS", 1)
        rela.add_new(0x36, "SS", 0)
        rela.add_new(0x4A, "LO", make_uid(rng.randint(0, 10**6), "ge-rela", 0))
        stdy = ds.private_block(0x0023, "GEMS_STDY_01", create=True)
        stdy.add_new(0x70, "FD", float(rng.randint(10**8, 10**9)))
        stdy.add_new(0x74, "SL", 1)
        stdy.add_new(0x7D, "SS", 0)
        parm = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        for off, vr, val in [(0x10, "US", 0), (0x11, "US", 0), (0x12, "SS", [14, 14, 14]), (0x16, "SS", 0),
                             (0x18, "DS", "0.0"), (0x1E, "DS", "0.0"), (0x25, "SS", [0, 0, 0, 0, 0, 0]),
                             (0x26, "US", [1, 0, 0, 0, 0, 0]), (0x27, "SH", "/1.0:1"), (0x28, "OB", bytes(rng.randrange(256) for _ in range(60))),
                             (0x2A, "OB", bytes(rng.randrange(256) for _ in range(96))), (0x2B, "SS", [0, 0, 0, 0]),
                             (0x31, "DS", ["-9.4", "12.6"]), (0x40, "FL", 38.4), (0x41, "FL", 0.0), (0x42, "SL", [0, 0, 0, 0]),
                             (0x64, "CS", "ORIGINAL"), (0x6F, "DS", ["0.0", "0.0", "0.0", "0.0"])]:
            parm.add_new(off, vr, val)
        helios = ds.private_block(0x0045, "GEMS_HELIOS_01", create=True)
        for off, vr, val in [(0x01, "SS", 16), (0x02, "FL", 40.0), (0x03, "SS", 1), (0x04, "CS", "E"),
                             (0x06, "CS", "OUT"), (0x30, "CS", "A"), (0x32, "FL", 1.0), (0x33, "FL", 1.0)]:
            helios.add_new(off, vr, val)

    def _series_mr(self, ds: Dataset, rng: random.Random, ctx: dict[str, Any], srng: random.Random) -> None:
        body, desc, cpt, meaning, seq, variant, protocol = srng.choice(_MR_PROTOCOLS)
        ctx.update(cpt=cpt, cpt_meaning=meaning, thickness=rng.choice((3.0, 4.0, 5.0)))
        ds.StudyDescription = desc
        ds.SeriesDescription = protocol
        ds.ProtocolName = protocol
        ds.SequenceName = f"*{protocol.split('_')[0]}2d1_{rng.randint(3, 25)}"
        ds.BodyPartExamined = body
        ds.ScanningSequence, ds.SequenceVariant = seq, variant
        if "IR" in seq:
            ds.InversionTime = str(rng.choice((150.0, 2500.0)))
        ds.ScanOptions = rng.choice((["PFP", "FS"], ["SAT1"], ["IR"]))
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = str(ctx["thickness"])
        ds.RepetitionTime = str(rng.choice((450.0, 3000.0, 5000.0)))
        ds.EchoTime = str(rng.choice((9.8, 89.0, 12.0)))
        ds.NumberOfAverages = "1"
        ds.ImagingFrequency = str(round(123.2 + rng.uniform(0, 0.01), 6))
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = "1"
        ds.MagneticFieldStrength = rng.choice(("1.5", "3.0"))
        ds.SpacingBetweenSlices = f"{ctx['thickness'] * 1.1:.2f}"
        ds.EchoTrainLength = str(rng.choice((1, 12, 17)))
        ds.PercentSampling = "100.0"
        ds.PercentPhaseFieldOfView = "100.0"
        ds.PixelBandwidth = str(rng.choice((130.0, 195.0, 260.0)))
        ds.TransmitCoilName = "Body"
        ds.ReceiveCoilName = "HeadNeck_20"
        ds.AcquisitionMatrix = [0, 256, 256, 0]
        ds.InPlanePhaseEncodingDirection = rng.choice(("ROW", "COL"))
        ds.FlipAngle = str(rng.choice((90, 150, 160)))
        ds.SAR = str(round(rng.uniform(0.1, 2.5), 6))
        ds.dBdt = 0.0
        ds.WindowCenter, ds.WindowWidth = str(rng.randint(300, 900)), str(rng.randint(600, 1800))
        if ds.Manufacturer == "SIEMENS":
            mrh = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
            for off, vr, val in [(0x08, "CS", "IMAGE NUM 4"), (0x09, "LO", "1.0"), (0x0B, "DS", "8710.0"),
                                 (0x0F, "SH", "Fast"), (0x11, "SH", "No"), (0x12, "SL", [0, 0, -1260]),
                                 (0x13, "SL", [0, 0, -1260]), (0x14, "IS", ["0", "0", "0"]), (0x17, "DS", "1.0"),
                                 (0x18, "IS", str(rng.choice((3900, 5100))))]:
                mrh.add_new(off, vr, val)
            csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
            csa.add_new(0x08, "CS", "IMAGE NUM 4")
            csa.add_new(0x09, "LO", "20100114")
            csa.add_new(0x18, "CS", "MR")
            csa.add_new(0x19, "LO", "20100114")
            csa.add_new(0x20, "OB", _csa(self._csa_series_entries(ds, rng, protocol)))
            ser = ds.private_block(0x0051, "SIEMENS MR HEADER", create=True)
            for off, vr, val in [(0x08, "CS", "IMAGE NUM 4"), (0x09, "LO", "1.0"), (0x0A, "SH", "TA 04:12"),
                                 (0x0B, "SH", "256p*256"), (0x0C, "LO", "FoV 230*230"), (0x0E, "LO", "Tra>Cor(-1.2)"),
                                 (0x0F, "LO", "HE1-4;NE1,2"), (0x11, "LO", "p2"), (0x12, "SH", "TP 0"),
                                 (0x13, "SH", "+LPH"), (0x16, "LO", "M/DIS2D"), (0x17, "SH", "SL 5.0"),
                                 (0x19, "LO", "A1/PFP/FS")]:
                ser.add_new(off, vr, val)
            ctx["csa_image"] = True

    @staticmethod
    def _csa_series_entries(ds: Dataset, rng: random.Random, protocol: str) -> list[tuple[str, str, list[str]]]:
        numeric = ["UsedPatientWeight", "NumberOfPrescans", "TransmitterCalibration", "PhaseGradientAmplitude",
                   "ReadoutGradientAmplitude", "SelectionGradientAmplitude", "GradientDelayTime", "RfWatchdogMask",
                   "RfPowerErrorIndicator", "SarWholeBody", "Sed", "SARMostCriticalAspect", "StimMaxOnline",
                   "StimMaxGradOnline", "ReadoutOS", "SliceResolution"]
        entries = [(name, "DS", [f"{rng.uniform(0, 400):.8f}"]) for name in numeric]
        entries += [("GradientMode", "SH", ["Fast"]), ("FlowCompensation", "ST", ["No"]),
                    ("PostProcProtocol", "UT", [""]), ("RecoProtocol", "UT", [""]),
                    ("DataFileName", "LO", [f"meas_MID{rng.randint(10, 999)}_{protocol}_FID{rng.randint(10**4, 10**5)}.dat"]),
                    ("PositivePCSDirections", "SH", ["+LPH"]), ("LongModelName", "LO", [str(ds.ManufacturerModelName)]),
                    ("CoilString", "LO", ["HE1-4;NE1,2"]), ("PATModeText", "LO", ["p2"]), ("PatReinPattern", "ST", ["1;HFS;72.57;;O;0;0;-1"]),
                    ("ProtocolChangeHistory", "US", ["0"]), ("MrPhoenixProtocol", "UN", [_ascconv(rng, protocol)])]
        return entries

    def _series_pt(self, ds: Dataset, rng: random.Random, ctx: dict[str, Any], srng: random.Random) -> None:
        tracer, tracer_code, nuclide, nuclide_code, half_life, dose = srng.choice(_RADIOPHARMACEUTICALS)
        ctx.update(cpt="78815", cpt_meaning="PET/CT skull base to mid-thigh", thickness=rng.choice((2.03, 3.27, 4.0)))
        ds.StudyDescription = "PET/CT WHOLE BODY"
        ds.SeriesDescription = rng.choice(("PET WB AC", "PET WB 3D MAC", "PET NAC"))
        ds.ProtocolName = "WB FDG" if "Fluoro" in tracer else "WB PSMA"
        ds.BodyPartExamined = "WHOLEBODY"
        ds.SliceThickness = str(ctx["thickness"])
        ds.Units, ds.CountsSource, ds.DecayCorrection = "BQML", "EMISSION", "START"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "measured,AC_CT"
        ds.ReconstructionMethod = rng.choice(("OSEM3D 3i21s", "PSF+TOF 2i21s"))
        ds.NumberOfSlices = 300
        ds.FrameReferenceTime = "0.0"
        ds.ActualFrameDuration = str(rng.choice((120000, 180000)))
        ds.CollimatorType = "NONE"
        rad = Dataset()
        rad.Radiopharmaceutical = tracer
        rad.RadiopharmaceuticalStartTime = ctx["study_time"][:6]
        rad.RadionuclideTotalDose = f"{dose * rng.uniform(0.8, 1.2):.1f}"
        rad.RadionuclideHalfLife = str(half_life)
        rad.RadionuclidePositronFraction = "0.97"
        rad.RadionuclideCodeSequence = [_code(nuclide_code, "SRT", nuclide)]
        rad.RadiopharmaceuticalCodeSequence = [_code(tracer_code, "SRT", tracer)]
        ds.RadiopharmaceuticalInformationSequence = [rad]
        ds.PatientGantryRelationshipCodeSequence = [_code("F-10470", "SRT", "headfirst")]
        orientation = _code("F-10450", "SRT", "recumbent")
        orientation.PatientOrientationModifierCodeSequence = [_code("F-10340", "SRT", "supine")]
        ds.PatientOrientationCodeSequence = [orientation]
        del ds.PatientPosition  # replaced by the code sequences in PET (PS3.3 C.8.9.5)
        ctx["bits_stored"] = 16  # PET images declare all 16 bits (PS3.3 C.8.9.4)
        pet = ds.private_block(0x0071, "SIEMENS MED PT", create=True)
        pet.add_new(0x21, "UI", make_uid(rng.randint(0, 10**6), "pt-registration", 0))
        pet.add_new(0x22, "DT", ds.StudyDate + "120000.000000")
        pet.add_new(0x23, "FD", [0.0, 0.0, 1.0])
        pet.add_new(0x24, "CS", "YES")
        ds.WindowCenter, ds.WindowWidth = "5000", "10000"

    def _series_xa(self, ds: Dataset, rng: random.Random, ctx: dict[str, Any], srng: random.Random) -> None:
        ctx.update(cpt="93454", cpt_meaning="Coronary angiography", thickness=None)
        ds.StudyDescription = "CORONARY ANGIOGRAPHY"
        ds.SeriesDescription = rng.choice(("LCA RAO 30", "RCA LAO 45", "LV gram"))
        ds.ProtocolName = "Cardiac 15fps"
        ds.BodyPartExamined = "HEART"
        ds.KVP = str(rng.randint(70, 100))
        ds.RadiationSetting = "GR"
        ds.XRayTubeCurrent = str(rng.randint(300, 900))
        ds.ExposureTime = str(rng.randint(4, 9))
        ds.DistanceSourceToDetector = str(rng.randint(950, 1200))
        ds.DistanceSourceToPatient = "765"
        ds.PositionerMotion = "STATIC"
        ds.PositionerPrimaryAngle = str(rng.choice((-30, 30, 45, -45, 0)))
        ds.PositionerSecondaryAngle = str(rng.choice((0, 20, -20, 25)))
        ds.ImagerPixelSpacing = [str(ctx["spacing"]), str(ctx["spacing"])]
        ds.IntensifierSize = "250"
        ds.FieldOfViewShape = "RECTANGLE"
        ds.FieldOfViewDimensions = [250, 250]
        ds.Grid = "IN"
        ds.FilterMaterial = ["COPPER", "ALUMINUM"]
        ds.RecommendedViewingMode = ""
        ds.PixelIntensityRelationship = "LIN"
        mask = Dataset()
        mask.MaskOperation = "NONE"
        ds.MaskSubtractionSequence = [mask]
        ds.AcquisitionDeviceProcessingDescription = "CARD 15 FPS"
        ds.ExposureIndex = rng.randint(100, 400)
        ds.DistanceSourceToIsocenter = 765.0
        ds.TableHeight = str(round(rng.uniform(90, 110), 1))
        philips = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
        for off, vr, val in [(0x01, "FL", 0.0), (0x02, "FL", 0.0), (0x03, "FL", 1.0), (0x08, "IS", "1"), (0x0B, "CS", "TRANSVERSAL"),
                             (0x10, "CS", "NO"), (0x12, "CS", "N"), (0x13, "SL", 1), (0x14, "SL", 1), (0x16, "SS", 0),
                             (0x17, "SL", 1), (0x18, "SL", 1), (0x1A, "FL", [0.0, 0.0, 0.0]), (0x1D, "IS", "1"),
                             (0x21, "CS", "N"), (0x22, "FL", 0.0), (0x25, "SH", "0"), (0x2B, "IS", "0"), (0x2C, "FL", 0.0),
                             (0x2D, "SS", 1), (0x32, "FL", 0.0), (0x33, "CS", "AP"), (0x35, "SS", 1), (0x36, "CS", "HEART"),
                             (0x5F, "SQ", []), (0x60, "SL", 1), (0x61, "CS", "N"), (0x63, "CS", "NO")]:
            philips.add_new(off, vr, val)
        ds.WindowCenter, ds.WindowWidth = "2048", "4096"

    # ---------------------------------------------------------------- instance level

    def _instance(self, spec: InstanceSpec) -> Dataset:
        rng = random.Random(f"instance:{self.seed}:{spec.index}")
        ctx = self._series_ctx
        ds = Dataset()
        ds.SOPInstanceUID = spec.uid
        ds.InstanceNumber = str(spec.instance_number)
        ds.InstanceCreationDate = spec.study_date
        t = ctx["study_time"]
        seconds = int(t[:2]) * 3600 + int(t[2:4]) * 60 + int(t[4:6]) + spec.instance_number * 2
        clock = f"{min(23, seconds // 3600):02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.{rng.randint(0, 999999):06d}"
        ds.InstanceCreationTime = clock
        ds.ContentDate = ds.AcquisitionDate = spec.study_date
        ds.ContentTime = ds.AcquisitionTime = clock
        ds.AcquisitionNumber = str(1 + spec.instance_number // 100)
        ds.ImageType = (["ORIGINAL", "PRIMARY", "AXIAL"] if spec.modality in ("CT", "PT")
                        else ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"] if spec.modality == "MR"
                        else ["ORIGINAL", "PRIMARY", "SINGLE PLANE"])
        thickness = ctx.get("thickness") or 1.0
        z = -200.0 + spec.instance_number * thickness
        half = self.matrix / 2 * ctx["spacing"]
        if spec.modality != "XA":
            ds.ImagePositionPatient = [f"{-half:.6f}", f"{-half:.6f}", f"{z:.6f}"]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.SliceLocation = f"{z:.6f}"
        if spec.modality == "CT":
            ds.XRayTubeCurrent = str(rng.randint(90, 450))
            ds.ExposureTime = str(rng.choice((500, 600, 800, 1000)))
            ds.Exposure = str(rng.randint(40, 300))
            ds.CTDIvol = round(rng.uniform(2, 25), 4)
            ds.DataCollectionCenterPatient = [round(rng.uniform(-5, 5), 4), round(rng.uniform(-190, -160), 4), z]
            ds.ReconstructionTargetCenterPatient = [0.0, round(rng.uniform(-190, -160), 4), z]
            ds.EstimatedDoseSaving = round(rng.uniform(0, 40), 4)
        elif spec.modality == "PT":
            ds.RescaleIntercept, ds.RescaleSlope = "0", f"{rng.uniform(0.5, 6):.6f}"
            ds.ImageIndex = spec.instance_number
            ds.DecayFactor = f"{rng.uniform(1.0, 1.2):.6f}"
            ds.DoseCalibrationFactor = f"{rng.uniform(28000, 32000):.4f}"
        elif spec.modality == "XA":
            ds.PatientOrientation = ["L", "F"]
        refs = []
        for k in range(rng.randint(1, 3)):
            ref = Dataset()
            ref.ReferencedSOPClassUID = SOP_CLASSES[spec.modality]
            ref.ReferencedSOPInstanceUID = make_uid(self.seed, "localizer", f"{spec.series}:{k}")
            refs.append(ref)
        ds.ReferencedImageSequence = refs
        if spec.pixel_kind == "j2k":
            ds.LossyImageCompression = "00"
        ds.ImageComments = rng.choice(("", "", "Motion artefact", "Contrast phase: venous", "Repeat acquisition"))
        if ctx.get("ge"):
            img = ds.private_block(0x0027, "GEMS_IMAG_01", create=True)
            for off, vr, val in [(0x06, "SL", spec.instance_number), (0x10, "SS", 0), (0x1C, "SL", 0), (0x1E, "SL", 0),
                                 (0x1F, "SL", 0), (0x20, "SS", 0), (0x35, "SS", 16), (0x40, "SH", "I"),
                                 (0x41, "FL", float(z)), (0x42, "FL", float(-half)), (0x43, "FL", float(-half)),
                                 (0x44, "FL", float(half)), (0x45, "FL", float(half)), (0x50, "FL", 0.0),
                                 (0x51, "FL", float(z))]:
                img.add_new(off, vr, val)
        if ctx.get("csa_image"):
            csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
            csa.add_new(0x10, "OB", _csa(self._csa_image_entries(rng, spec)))
        return ds

    @staticmethod
    def _csa_image_entries(rng: random.Random, spec: InstanceSpec) -> list[tuple[str, str, list[str]]]:
        entries: list[tuple[str, str, list[str]]] = [
            ("EchoLinePosition", "IS", [str(rng.randint(100, 160))]), ("EchoColumnPosition", "IS", ["128"]),
            ("EchoPartitionPosition", "IS", ["32"]), ("UsedChannelMask", "UL", [str(rng.randint(1, 2**20))]),
            ("Actual3DImaPartNumber", "IS", []), ("ICE_Dims", "LO", [f"X_1_1_1_1_1_1_1_1_1_1_1_{spec.instance_number}"]),
            ("B_value", "IS", [str(rng.choice((0, 50, 800, 1400)))]), ("Filter1", "IS", []), ("Filter2", "IS", []),
            ("ProtocolSliceNumber", "IS", [str(spec.instance_number - 1)]), ("RealDwellTime", "IS", ["3900"]),
            ("PixelFile", "UN", []), ("PixelFileName", "UN", []), ("SliceMeasurementDuration", "DS", ["8710.00000000"]),
            ("SequenceMask", "UL", ["134217728"]), ("AcquisitionMatrixText", "SH", ["256p*256"]),
            ("MeasuredFourierLines", "IS", ["0"]), ("FlowEncodingDirection", "IS", []), ("FlowVenc", "FD", []),
            ("PhaseEncodingDirectionPositive", "IS", ["1"]), ("NumberOfImagesInMosaic", "US", []),
            ("DiffusionGradientDirection", "FD", [f"{rng.uniform(-1, 1):.8f}" for _ in range(3)]),
            ("ImaCoilString", "LO", ["HE1-4"]), ("ImaRelTablePosition", "IS", ["0", "0", "0"]),
            ("RFSWDDataType", "SH", ["predicted"]), ("GSWDDataType", "SH", ["predicted"]),
            ("NormalizeManipulated", "IS", []), ("ImaPATModeText", "LO", ["p2"]),
            ("B_matrix", "FD", [f"{rng.uniform(0, 1000):.8f}" for _ in range(6)]),
            ("BandwidthPerPixelPhaseEncode", "FD", [f"{rng.uniform(10, 40):.8f}"]), ("FMRIStimulInfo", "IS", []),
            ("ImagePositionPatient", "FD", [f"{rng.uniform(-120, 120):.8f}" for _ in range(3)]),
            ("ImageOrientationPatient", "FD", ["1.00000000", "0.00000000", "0.00000000", "0.00000000", "1.00000000", "0.00000000"]),
            ("SlicePosition_PCS", "FD", [f"{rng.uniform(-120, 120):.8f}" for _ in range(3)]),
            ("ImaAbsTablePosition", "SL", ["0", "0", "-1260"]), ("NonPlanarImage", "US", ["0"]),
            ("MoCoQMeasure", "US", []), ("LQAlgorithm", "SH", []), ("SliceNormalVector", "FD", ["0.0", "0.0", "1.0"]),
            ("RBMoCoTrans", "FD", []), ("RBMoCoRot", "FD", []), ("MultistepIndex", "IS", ["0"]),
        ]
        # Empty entries are kept, as scanners write them: the element list is fixed per software version.
        return entries
